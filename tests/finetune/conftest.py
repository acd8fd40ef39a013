"""Fixtures of the fine-tuning tests: the real tokenizer and real Wikipedia sentences."""
from __future__ import annotations

import pytest

from bertperf.finetune.common import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    """bert-base-uncased WordPiece (the real vocab.txt), lower-cased as guessed from the vocab."""
    return load_tokenizer(vocab_file)


@pytest.fixture(scope="session")
def wiki_docs(enwiki_bz2):
    """The real Wikipedia sample as documents (lists of sentences), ~105 articles."""
    from bertperf.data.extract import read_documents

    docs = list(read_documents([str(enwiki_bz2)], quiet=True))
    assert len(docs) > 50
    return docs


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models here are tiny: one thread is faster, and far faster when other processes share
    the 2 cores (OpenMP barriers of 2 threads stall under oversubscription). Restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- Miniature GLUE task folders with the real files' headers, column layout and row styles

from pathlib import Path

T = "\t"

MNLI_DEV_HEADER = T.join(["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                          "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2",
                          "label3", "label4", "label5", "gold_label"])
MNLI_TRAIN_HEADER = T.join(MNLI_DEV_HEADER.split(T)[:11] + ["gold_label"])
MNLI_TEST_HEADER = T.join(MNLI_DEV_HEADER.split(T)[:10])


def _mnli_row(i, s1, s2, labels):
    return T.join([str(i), "31193", f"{31193}n", "government", f"( ( {s1} ) )", f"( {s2} )", "(ROOT (S))",
                   "(ROOT (S))", s1, s2] + labels)


FILES: dict[str, dict[str, str]] = {
    "CoLA": {
        "train.tsv": "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
                     "gj04\t0\t*\tThey drank the pub.\n"
                     "cj99\t1\t\tThe more you eat, the \"fatter\" you get.\n",
        "dev.tsv": "gj04\t0\t*\tThe sailors rode the breeze clear of the rocks the.\n"
                   "gj04\t1\t\tThe weights made the rope stretch over the pulley.\n",
        "test.tsv": "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked its way down the road.\n",
    },
    "SST-2": {
        "train.tsv": "sentence\tlabel\nhide new secretions from the parental units \t0\n"
                     "contains no wit , only labored gags \t0\nthat loves its characters \t1\n",
        "dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\nunflinchingly bleak \t0\n",
        "test.tsv": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n1\tthis film 's relationship to actual tension is the same as what christmas-tree flocking in a spray can is to actual snow .\n",
    },
    "MRPC": {
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                     "1\t702876\t702977\tAmrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .\tReferring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence .\n"
                     "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 .\n",
        "dev.tsv": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                   "1\t1355540\t1355592\tHe said the foodservice pie business doesn 't fit the company 's long-term growth strategy .\t\" The foodservice pie business does not fit our long-term growth strategy .\n",
        "test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                    "0\t1089874\t1089925\tPCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief financial officer , will report directly to Mr So .\tCurrent Chief Operating Officer Mike Butcher and Group Chief Financial Officer Alex Arena will report to So .\n"
                    "1\t3019446\t3019327\tThe world 's two largest automakers said their U.S. sales declined more than predicted last month as a late summer sales frenzy caused more of an industry backlash than expected .\tDomestic sales at both GM and No. 2 Ford Motor Co. declined more than predicted as a late summer sales frenzy prompted a larger-than-expected industry backlash .\n",
    },
    "STS-B": {
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                     "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
                     "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute.\tA man is playing a flute.\t3.800\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                   "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000\n"
                   "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\tA child is riding a horse.\t4.750\n",
        "test.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
                    "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\tA girl is brushing her hair.\n",
    },
    "QQP": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                     "133273\t213221\t213222\tHow is the life of a math student? Could you describe your own experiences?\tWhich level of prepration is enough for the exam jlpt5?\t0\n"
                     "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n"
                     "201841\t303951\t174364\tHow can I gain weight on my body?\n"  # malformed: question2 and label missing
                     "360472\t364011\t490273\tWhat causes stool color to change to yellow?\tWhat can cause stool to come out as little balls?\t0\n",
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                   "40066\t15109\t15110\tWhat is the best self help book you have read? Why? How did it change your life?\tWhat are the top self help books I should read?\t1\n",
        "test.tsv": "id\tquestion1\tquestion2\n0\tWould the idea of Trump and Putin in bed together scare you, given the geopolitical implications?\tDo you think that if Donald Trump were elected President, he would be able to restore relations with Putin and Russia as he said he could?\n",
    },
    "MNLI": {
        "train.tsv": MNLI_TRAIN_HEADER + "\n"
                     + _mnli_row(0, "Conceptually cream skimming has two basic dimensions - product and geography.",
                                 "Product and geography are what make cream skimming work. ", ["neutral", "neutral"]) + "\n"
                     + _mnli_row(1, "you know during the season and i guess at at your level uh you lose them",
                                 "You lose the things to the following level if the people recall.", ["entailment", "entailment"]) + "\n",
        "dev_matched.tsv": MNLI_DEV_HEADER + "\n"
                           + _mnli_row(0, "The new rights are nice enough", "Everyone really likes the newest benefits ",
                                       ["neutral", "entailment", "neutral", "neutral", "neutral", "neutral"]) + "\n",
        "dev_mismatched.tsv": MNLI_DEV_HEADER + "\n"
                              + _mnli_row(0, "Your contribution helped make it possible for us to provide our students with a quality education.",
                                          "Your contributions were of no help with our students' education.",
                                          ["contradiction"] * 6) + "\n",
        "test_matched.tsv": MNLI_TEST_HEADER + "\n" + _mnli_row(0, "Hierbas, ans seco, ans dulce, and frigola are just a few names worth keeping a look-out for.", "Hierbas is a name worth looking out for.", []) + "\n",
        "test_mismatched.tsv": MNLI_TEST_HEADER + "\n" + _mnli_row(0, "What have you decided, what are you going to do?", "So what's your decision?", []) + "\n",
    },
    "QNLI": {
        "train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it and most of the seasons that followed, Digimon Tamers takes a darker and more realistic approach to its story.\tnot_entailment\n"
                     "1\tWhich missile batteries often have individual launchers several kilometres from one another?\tWhen MANPADS is operated by specialists, batteries may have several dozen teams deploying separately in small sections.\tnot_entailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution was herald?\tAs of that day, the new constitution heralding the Second Republic came into force.\tentailment\n",
        "test.tsv": "index\tquestion\tsentence\n0\tWhat organization is devoted to Jihad against Israel?\tFor some decades prior to the First Palestine Intifada in 1987, the Muslim Brotherhood in Palestine took a \"quiescent\" stance towards Israel.\n",
    },
    "RTE": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n"
                     "1\tA place of sorrow, after Pope John Paul II died, became a place of celebration.\tPope Benedict XVI is the new leader of the Roman Catholic Church.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44.\tChristopher Reeve had an accident.\tnot_entailment\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMangla was summoned after Madhumita's sister Nidhi Shukla, who was the first witness in the case.\tShukla is related to Mangla.\n",
    },
    "WNLI": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\tThe carrot had a hole.\t1\n"
                     "1\tJohn couldn't see the stage with Billy in front of him because he is so short.\tJohn is so short.\t1\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair. It has to be cleaned.\tThe hair has to be cleaned.\t0\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMaude and Dora had seen the trains rushing across the prairie.\tHorses ran away when Maude and Dora came in sight.\n",
    },
    "diagnostic": {
        "diagnostic.tsv": "index\tsentence1\tsentence2\n0\tThe cat sat on the mat.\tThe cat did not sit on the mat.\n1\tThe cat sat on the mat.\tThe cat sat on the mat.\n",
    },
}


def write_glue(root: Path) -> Path:
    """Write every folder of FILES under `root`; returns root."""
    for folder, files in FILES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / folder / name).write_text(text, encoding="utf-8")
    return root


def write_sentiment_task(d: Path, n_train: int, n_dev: int, rng, fill: list[str], pos: list[str],
                         neg: list[str], words: tuple[int, int]) -> Path:
    """An SST-2-layout folder whose label is learnable: each row is `words` random `fill` words with
    one word of `pos` (label 1) or `neg` (label 0) inserted at a random place; returns d."""
    def rows(n):
        out = []
        for _ in range(n):
            y = rng.randrange(2)
            ws = [rng.choice(fill) for _ in range(rng.randint(*words))]
            ws.insert(rng.randrange(len(ws) + 1), rng.choice(pos if y else neg))
            out.append(f"{' '.join(ws)}\t{y}")
        return out

    d.mkdir(parents=True, exist_ok=True)
    (d / "train.tsv").write_text("\n".join(["sentence\tlabel"] + rows(n_train)) + "\n")
    (d / "dev.tsv").write_text("\n".join(["sentence\tlabel"] + rows(n_dev)) + "\n")
    return d
