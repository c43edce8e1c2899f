"""Baichuan-Omni-1.5 stage 2.1, audio alignment: only the audio embedding side -- the Conv-GMLP bridge --
learns (LLM, vision and the audio encoder frozen), on speech recognition (+ 40% text)."""

from experiments import common
from experiments.baichuan_omni.model import stage


def get_config(arg="tiny"):
    return stage(arg, "2.1", {"asr": 1.0}, [("audio_connector/.*", common.schedule(1e-3)), (".*", None)],
                 {"tiny": 30, "7b": 5000})
