"""dataclass_from_dict: typed configs from plain tables, unknown keys refused with where they came from."""
import json
from dataclasses import dataclass, field

import pytest

from petvr.backbone import get_model_config
from petvr.typed_config import dataclass_from_dict


@dataclass
class Inner:
    width: int = 8
    depth: int = 2


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: dict = field(default_factory=dict)  # a plain dict field stays a dict


def test_builds_nested_dataclasses_and_keeps_defaults():
    built = dataclass_from_dict(Outer, {"inner": {"depth": 3}, "sizes": {"a": 1}}, "[outer]")
    assert built == Outer(name="x", inner=Inner(width=8, depth=3), sizes={"a": 1})
    assert dataclass_from_dict(Outer, {"inner": Inner(1, 1)}, "[outer]").inner == Inner(1, 1)


def test_unknown_keys_name_where_and_the_known_ones():
    with pytest.raises(ValueError) as caught:
        dataclass_from_dict(Outer, {"nmae": "y", "colour": 1}, "method 'demo'")
    assert str(caught.value) == ("method 'demo' has unknown key(s) ['colour', 'nmae'] (did you mean 'name'?); "
                                 "known: ['inner', 'name', 'sizes']")
    with pytest.raises(ValueError, match=r"^\[outer\]: inner has unknown key\(s\) \['height'\]; known: \['depth', "):
        dataclass_from_dict(Outer, {"inner": {"height": 3}}, "[outer]")
    with pytest.raises(ValueError, match=r"\[outer\] must be a table of keys and values, found list"):
        dataclass_from_dict(Outer, [1, 2], "[outer]")


def test_a_model_config_file_with_an_unknown_key_is_refused_naming_the_file(tmp_path):
    config = get_model_config("petvr-tiny").to_dict()
    config["vision"]["patch"] = 8
    (tmp_path / "typo.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"typo.json: vision has unknown key\(s\) \['patch'\] \(did you mean"):
        get_model_config(tmp_path / "typo.json")
