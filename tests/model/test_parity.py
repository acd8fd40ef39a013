"""Parity with transformers on the real all-MiniLM-L6-v2 checkpoint (fp32, padded batch)."""
from __future__ import annotations

import pytest
import torch

from bertperf.model import BertForQuestionAnswering, BertForTokenClassification, BertModel

ATOL = 1e-5


@pytest.fixture(scope="module")
def models(minilm_dir):
    import transformers

    ours = BertModel.from_pretrained(minilm_dir).eval()
    ref = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    return ours, ref


def test_real_checkpoint_last_hidden_states_match_transformers(models, sentence_batch):
    ours, ref = models
    ids, seg, mask = sentence_batch
    assert ours.loading_info == {"initialized": [], "dropped": []}
    with torch.no_grad():
        o = ours(ids, seg, mask)
        r = ref(input_ids=ids, token_type_ids=seg, attention_mask=mask)
    valid = mask.bool()
    assert valid.sum() > 40 and not valid.all()  # real padding in the batch
    torch.testing.assert_close(o.last_hidden_state[valid], r.last_hidden_state[valid], atol=ATOL, rtol=0)
    torch.testing.assert_close(o.pooler_output, r.pooler_output, atol=ATOL, rtol=0)


def test_real_checkpoint_each_sentence_alone_equals_its_batch_row(models, sentence_batch):
    """Padding invariance on the real model: a sentence run alone (no padding) gives the same
    hidden states as its row in the padded batch."""
    ours, _ = models
    ids, seg, mask = sentence_batch
    with torch.no_grad():
        batch = ours(ids, seg, mask).last_hidden_state
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            alone = ours(ids[i:i + 1, :n], seg[i:i + 1, :n], mask[i:i + 1, :n]).last_hidden_state
            torch.testing.assert_close(alone[0], batch[i, :n], atol=ATOL, rtol=0)


@pytest.mark.parametrize("cls", [BertForTokenClassification, BertForQuestionAnswering])
def test_real_checkpoint_into_headed_models(minilm_dir, models, sentence_batch, cls):
    """A BertModel checkpoint loads into a head model: the encoder is the checkpoint's, the head
    is new, the unused pooler is dropped."""
    ours, _ = models
    kw = {"num_labels": 9} if cls is BertForTokenClassification else {}
    m = cls.from_pretrained(minilm_dir, **kw).eval()
    assert m.loading_info["dropped"] == ["pooler"]
    assert m.loading_info["initialized"] == (["classifier"] if cls is BertForTokenClassification
                                             else ["qa_outputs"])
    ids, seg, mask = sentence_batch
    with torch.no_grad():
        torch.testing.assert_close(m.bert(ids, seg, mask).last_hidden_state,
                                   ours(ids, seg, mask).last_hidden_state, atol=0, rtol=0)
