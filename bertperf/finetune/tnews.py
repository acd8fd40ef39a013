"""TNEWS (CLUE's Chinese news-title classification): JSON-lines reader, labels, submission writer.

Each line of train.json / dev.json is `{"label": "102", "label_desc": "news_entertainment",
"sentence": "...", "keywords": "..."}`; test.json lines carry `"id"` and no label. The label set
is read from `labels.json` next to the data when present (CLUE ships it: one
`{"label", "label_desc"}` per line), else the 15 TNEWS labels below. The model input is the
sentence (as the CLUE baseline); `keywords` is kept on the example but not used.

Submission (`write_predictions`): `tnews_predict.json`, one `{"id", "label", "label_desc"}` per
test line, as the CLUE leaderboard expects.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

from bertperf.finetune.common import need_file
from bertperf.utils.atomic import atomic_write_text
from bertperf.utils.errors import BertperfError

#: CLUE's labels.json for TNEWS (codes 105 and 111 are not used)
TNEWS_LABELS: dict[str, str] = {
    "100": "news_story", "101": "news_culture", "102": "news_entertainment", "103": "news_sports",
    "104": "news_finance", "106": "news_house", "107": "news_car", "108": "news_edu", "109": "news_tech",
    "110": "news_military", "112": "news_travel", "113": "news_world", "114": "news_stock",
    "115": "news_agriculture", "116": "news_game",
}

SUBMISSION_NAME = "tnews_predict.json"


@dataclass
class TnewsExample:
    id: int | str
    sentence: str
    keywords: str
    label: str | None  # the label code, e.g. "102"
    where: str


def load_labels(data_dir: str | os.PathLike | None) -> dict[str, str]:
    """label code -> description, from `<data_dir>/labels.json` if it exists, else TNEWS_LABELS."""
    path = None if data_dir is None else os.path.join(os.fspath(data_dir), "labels.json")
    if path is None or not os.path.isfile(path):
        return dict(TNEWS_LABELS)
    out = {}
    for n, obj in _json_lines(path):
        if "label" not in obj:
            raise BertperfError(f"{path}:{n}: field 'label' is missing; labels.json lines are "
                                '{"label": "100", "label_desc": "news_story"}')
        out[str(obj["label"])] = str(obj.get("label_desc", obj["label"]))
    if not out:
        raise BertperfError(f"{path}: no label in the file; delete it to use the built-in TNEWS labels")
    return out


def _json_lines(path: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BertperfError(f"{path}:{n}: not a JSON object ({e}); TNEWS files hold one per line") from None
            if not isinstance(obj, dict):
                raise BertperfError(f"{path}:{n}: not a JSON object; TNEWS files hold one per line")
            yield n, obj


def read_tnews(path: str | os.PathLike, labels: dict[str, str] | None = None) -> list[TnewsExample]:
    """Examples of a TNEWS JSON-lines file. A label outside `labels` (default TNEWS_LABELS), or a
    missing 'sentence' -> BertperfError naming file and line."""
    path = need_file(path, "TNEWS file", "pass the train.json / dev.json / test.json of CLUE's TNEWS")
    labels = TNEWS_LABELS if labels is None else labels
    out = []
    for n, obj in _json_lines(path):
        where = f"{path}:{n}"
        if not isinstance(obj.get("sentence"), str):
            raise BertperfError(f"{where}: field 'sentence' (a string) is missing")
        label = obj.get("label")
        if label is not None:
            label = str(label)
            if label not in labels:
                raise BertperfError(f"{where}: label {label!r} is not a TNEWS label ({', '.join(labels)}); "
                                    "fix the line or add the label to labels.json")
        out.append(TnewsExample(obj.get("id", len(out)), obj["sentence"], str(obj.get("keywords", "")), label, where))
    return out


def write_predictions(out_dir: str | os.PathLike, examples: Sequence[TnewsExample], pred_ids: Sequence[int],
                      labels: dict[str, str]) -> str:
    """`<out_dir>/tnews_predict.json`: {"id", "label", "label_desc"} per example; pred_ids index
    into list(labels). Returns the path."""
    codes = list(labels)
    if len(pred_ids) != len(examples):
        raise ValueError(f"{len(pred_ids)} predictions for {len(examples)} examples")
    lines = [json.dumps({"id": e.id, "label": codes[int(p)], "label_desc": labels[codes[int(p)]]}, ensure_ascii=False)
             for e, p in zip(examples, pred_ids)]
    path = os.path.join(os.fspath(out_dir), SUBMISSION_NAME)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
