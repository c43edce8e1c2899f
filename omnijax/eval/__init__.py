"""Evaluation: metrics for generated answers (WER/CER, exact match, multiple choice, spoken gap) and the
per-stage report."""

from omnijax.eval.metrics import (accuracy, cer, choice_letter, choice_match, exact_match, normalize_text, score,
                                  spoken_gap, wer)
from omnijax.eval.report import format_table, read_report, update_report, write_report

__all__ = ["accuracy", "cer", "choice_letter", "choice_match", "exact_match", "format_table", "normalize_text",
           "read_report", "score", "spoken_gap", "update_report", "wer", "write_report"]
