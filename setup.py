"""omnijax: JAX/Flax training of omni-modal (text, image, video, audio) language models."""

from setuptools import find_packages, setup

setup(
    name="omnijax",
    version="0.1.0",
    description="Progressive omni-modal LLM training in JAX/Flax (Ola, Capybara-OMNI, Baichuan-Omni recipes)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["omnijax", "omnijax.*", "data_pipelines", "data_pipelines.*", "experiments", "experiments.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.0",
        "optax>=0.2.6",
        "orbax-checkpoint>=0.11.0",
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.9",
        "transformers>=5.0.0",
        "librosa>=0.11.0",
        "soxr>=0.5.0",
        "soundfile>=0.13.0",
        "einops>=0.8.0",
        "ml-collections>=1.1.0",
        "safetensors>=0.5.0",
        "numpy>=2.0",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "pillow>=10.0",
        "msgpack>=1.0",
        "array-record>=0.8.0",
        "av>=14.0",
        "espeakng-loader>=0.2.4",
        "tokenizers>=0.21",
        "threadpoolctl>=3.0",
        "jiwer>=4.0",
        "pandas>=2.2",  # omnijax.experiment's tables
        "matplotlib>=3.8",  # omnijax.experiment's plots
    ],
    extras_require={
        # The CPU wheel of torch that lies on the machines' disk; a bare `torch` pulls a CUDA build. The demo
        # checks its export against transformers (torch); the tests also compile stages for TPU slices (libtpu).
        "demo": ["torch==2.13.0"],
        "test": ["torch==2.13.0", "pytest>=8.0", "pytest-xdist>=3.6", "jax[tpu]>=0.10.2", "nbformat>=5.10",
                 "ipykernel>=6.29", "nbclient>=0.10"],  # the notebooks run in smoke mode in the suite
        # experiments/notebooks: run in Jupyter, or headless with nbclient (as their committed outputs were)
        "notebooks": ["torch==2.13.0", "ipykernel>=6.29", "nbclient>=0.10", "nbformat>=5.10"],
        "gpu": ["jax[cuda13]>=0.10.2"],
        "tpu": ["jax[tpu]>=0.10.2"],
    },
)
