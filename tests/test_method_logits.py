"""Every method's logits equal, bit for bit, the ones recorded before the architecture change (issue 11), built
through `mmpt.create_model` by tests/record_logits.py's `measure`, the function that wrote the record
(`python -m tests.records` appends a new method's variants)."""
import pytest
import torch

import mmpt
import trainers  # noqa: F401  (declares the methods)
from tests import record_logits as record
from tests import records


@pytest.fixture(scope="module")
def recorded():
    return torch.load(record.RECORD_PATH)


@pytest.mark.parametrize("variant", record.all_variants(), ids=lambda v: v[0][0])
def test_logits_equal_the_record(recorded, variant):
    (name, trainer, overrides), resnet = variant
    if name not in recorded:
        pytest.fail(records.missing_hint("logits", name), pytrace=False)
    measured = record.measure(trainer, overrides, resnet)
    expected = recorded[name]
    assert measured["shapes"] == expected["shapes"]  # checkpoint keys and shapes
    for key in ("init", "set"):
        assert records.equal_as_recorded(recorded, name, measured[key], expected[key]), \
            (measured[key] - expected[key]).abs().max()


def test_record_covers_every_declared_method(recorded):
    covered = {trainer for name, trainer, _, _ in record.variants() if name in recorded}
    for method in mmpt.declared_methods():
        if method not in covered:
            pytest.fail(f"{method} has no recorded logits: declare `record_variants = {{name: overrides}}` in its "
                        f"trainer class, then run `{records.COMMAND}`", pytrace=False)


def test_create_model_errors_are_one_line_config_errors():
    from dassl.utils import ConfigError

    clip_model = record.backbone()
    with pytest.raises(ConfigError, match=r"^TRAINER.MAPLE.N_CTXX: no such option of MaPLe \(options: .*N_CTX"):
        mmpt.create_model("MaPLe", clip_model, record.CLASSNAMES, N_CTXX=2)
    with pytest.raises(ConfigError, match=r"^Unknown method 'Maple'. Did you mean 'MaPLe'\?"):
        mmpt.create_model("Maple", clip_model, record.CLASSNAMES)
    with pytest.raises(ConfigError, match=r"TRAINER.MAPLE.PROMPT_DEPTH=9: expected an int in 1..3"):
        mmpt.create_model("MaPLe", clip_model, record.CLASSNAMES)  # the default depth exceeds the 3-layer backbone
    model = mmpt.create_model("CoOp", clip_model, record.CLASSNAMES, PREC="fp32", TRUNCATE_TEXT=False)
    assert model.text_encoder.truncate is False
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]


def test_the_record_command_appends_missing_variants_and_leaves_entries_alone(tmp_path):
    """python -m tests.records: computes only the variants a file lacks, with the record's own measure."""
    calls = []

    class FakeRecord:
        RECORD_PATH = str(tmp_path / "data" / "fake.pt")

        @staticmethod
        def variants():
            return [("a", "CoOp", {}, False), ("b", "CoOp", {"N_CTX": 2}, True)]

        @staticmethod
        def measure(trainer, overrides, resnet):
            calls.append((trainer, overrides, resnet))
            return torch.tensor([float(len(calls))])

    records.save(FakeRecord.RECORD_PATH, {"a": torch.tensor([-1.0]), "__machine__": {"x": 1}, "old": 0})
    lines = []
    assert records.extend(FakeRecord, echo=lines.append) == ["b"]
    assert calls == [("CoOp", {"N_CTX": 2}, True)]
    saved = torch.load(FakeRecord.RECORD_PATH)
    assert torch.equal(saved["a"], torch.tensor([-1.0])) and torch.equal(saved["b"], torch.tensor([1.0]))
    assert saved["__machine__"] == {"x": 1} and saved["old"] == 0  # kept, reported
    assert any("old" in line and "__machine__" not in line for line in lines)
    assert records.extend(FakeRecord) == [] and len(calls) == 1  # nothing missing: nothing computed
    assert records.missing_hint("logits", "X") == \
        "no entry for 'X' in tests/data record 'logits': run `PYTHONPATH=$PWD python -m tests.records logits`"


def test_declared_record_variants_join_the_record(monkeypatch):
    method = mmpt.declared_methods()["CoOp"]
    monkeypatch.setattr(method, "record_variants", {"CoOp_declared": {"N_CTX": 3}})
    assert ("CoOp_declared", "CoOp", {"N_CTX": 3}, False) in record.variants()
    monkeypatch.setattr(method, "record_variants", {"CoOp": {}})
    with pytest.raises(ValueError, match=r"record_variants \['CoOp'\] clash"):
        record.all_variants()
