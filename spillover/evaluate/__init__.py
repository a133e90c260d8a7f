"""Evaluation stage: sampling, question sets, metrics with bootstrap CIs, and the judge-free probe."""

from spillover.evaluate.metrics import (
    Estimate,
    JudgedSample,
    Thresholds,
    bootstrap_mean_ci,
    compute_metrics,
    compute_metrics_by,
    misalign_at_k,
)
from spillover.evaluate.probe import ContrastPair, PairShift, ProbeResult, load_pairs, probe, run_probe
from spillover.evaluate.questions import Question, SampleRequest, expand_samples, load_questions
from spillover.evaluate.sampling import (
    Completion,
    HFSampler,
    SamplerBackend,
    SampleRow,
    SamplingParams,
    load_sampler,
    sample_examples,
    sample_questions,
)
from spillover.models._logprob import AnswerSpan, answer_logprobs, answer_span, score_spans

__all__ = [
    "AnswerSpan", "Completion", "ContrastPair", "Estimate", "HFSampler", "JudgedSample", "PairShift", "ProbeResult",
    "Question", "SampleRequest", "SampleRow", "SamplerBackend", "SamplingParams", "Thresholds", "answer_logprobs",
    "answer_span", "bootstrap_mean_ci", "compute_metrics", "compute_metrics_by", "expand_samples", "load_pairs",
    "load_questions", "load_sampler", "misalign_at_k", "probe", "run_probe", "sample_examples", "sample_questions",
    "score_spans",
]
