"""VQAv2 accuracy as an `evaluate` metric, loadable offline:

    evaluate.load("path/to/tinyvlm/training/metrics/vqa_accuracy")

`evaluate.load("vqa_accuracy")` would try the Hub, which is out of reach here; loading this folder
(or this file) works offline. The arithmetic lives in `tinyvlm.training.vqa_eval` so that the
metric, the `tinyvlm eval` command and the tests share one implementation.
"""

import datasets
import evaluate
from tinyvlm.training.vqa_eval import compute_vqa_metrics

_DESCRIPTION = """\
VQAv2 accuracy as the official evaluation computes it: the prediction is normalised (punctuation,
number words, articles, contractions); a question scores the mean over the leave-one-out subsets
of its reference answers of min(#matching / 3, 1). Also reports GQA-style exact match, POPE-style
yes/no accuracy and F1, and per answer-type / question-type accuracy. Values are percentages.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of predicted answer strings.
    references: list of lists of reference answers (VQAv2 has ten per question).
    answer_types: optional list of answer types ("yes/no", "number", "other"), one per question.
    question_types: optional list of question types, one per question.
    multiple_choice_answers: optional list of VQAv2's majority answers, used for exact match.
    ndigits: decimal places of the percentages (2 as the official tools; None keeps all).
Returns:
    vqa_accuracy, exact_match, yes_no_* (when some reference is yes/no), per_answer_type,
    per_question_type, num_questions.
Examples:
    >>> metric = evaluate.load("tinyvlm/training/metrics/vqa_accuracy")
    >>> metric.compute(predictions=["two"], references=[["2"] * 10])["vqa_accuracy"]
    100.0
"""

_CITATION = """\
@inproceedings{goyal2017making,
  title={Making the V in VQA Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/GT-Vision-Lab/VQA"],
        )

    def _compute(
        self,
        predictions,
        references,
        answer_types=None,
        question_types=None,
        multiple_choice_answers=None,
        ndigits=2,
    ):
        return compute_vqa_metrics(
            predictions,
            references,
            answer_types=answer_types,
            question_types=question_types,
            multiple_choice_answers=multiple_choice_answers,
            ndigits=ndigits,
        )
