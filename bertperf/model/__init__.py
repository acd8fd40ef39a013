"""BERT models: config presets, encoder, pre-training and fine-tuning heads (see CONTRACTS.md)."""
from bertperf.model.bert import BertModel, BertModelOutput, BertPreTrainedModel
from bertperf.model.config import PRESETS, BertConfig
from bertperf.model.heads import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    PreTrainingOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

MODEL_CLASSES = {
    cls.hf_architecture: cls
    for cls in (BertModel, BertForPreTraining, BertForSequenceClassification, BertForTokenClassification,
                BertForQuestionAnswering)
}

__all__ = [
    "PRESETS", "BertConfig", "BertModel", "BertModelOutput", "BertPreTrainedModel", "BertForPreTraining",
    "PreTrainingOutput", "BertForSequenceClassification", "BertForTokenClassification",
    "BertForQuestionAnswering", "SequenceClassifierOutput", "TokenClassifierOutput",
    "QuestionAnsweringOutput", "MODEL_CLASSES",
]
