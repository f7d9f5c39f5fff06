import pytest

from edgekit.errors import UserError
from edgekit.passes import get_pass
from edgekit.recipe import parse_recipe


def test_empty_recipe_exports_as_is():
    r = parse_recipe("")
    assert r.passes == [] and r.precisions == []


def test_shorthand_splits_passes_options_and_precision():
    r = parse_recipe("early-exit:layers=2,4,criterion=entropy+token-skip:keep=0.5+int8")
    assert r.precisions == ["int8"]
    assert [p.name for p in r.passes] == ["early-exit", "token-skip"]
    assert r.passes[0].options == {"layers": [2, 4], "criterion": "entropy"}
    assert r.passes[1].options == {"keep": 0.5}


@pytest.mark.parametrize("text", ["int8++fp16", "svd:energy=0.9,=3", "prune-ffn:"])
def test_malformed_recipe_is_user_error(text):
    with pytest.raises(UserError):
        parse_recipe(text)


def test_bare_value_maps_to_the_pass_primary_option():
    step = parse_recipe("prune-ffn:0.5+svd:0.9+int8").passes
    assert get_pass(step[0].name, step[0].options).config.ratio == 0.5
    assert get_pass(step[1].name, step[1].options).config.energy == 0.9


def test_unknown_pass_names_the_fix():
    with pytest.raises(UserError, match="unknown pass 'nope'"):
        get_pass("nope", {})


def test_yaml_recipe_gives_the_same_steps_as_the_shorthand(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "passes:\n  - prune-heads: {ratio: 0.5}\n  - svd: 0.9\n  - early-exit: {layers: [2, 4], criterion: entropy}\n"
        "  - vocab-prune\nprecisions: [int8]\n",
        encoding="utf-8",
    )
    r = parse_recipe(str(path))
    same = parse_recipe("prune-heads:ratio=0.5+svd:0.9+early-exit:layers=2,4,criterion=entropy+vocab-prune+int8")
    assert [(p.name, p.options) for p in r.passes] == [(p.name, p.options) for p in same.passes]
    assert r.precisions == ["int8"]
    assert r.shorthand == "prune-heads:ratio=0.5+svd:0.9+early-exit:layers=2,4,criterion=entropy+vocab-prune+int8"
    again = parse_recipe(r.shorthand)
    assert [(p.name, p.options) for p in again.passes] == [(p.name, p.options) for p in r.passes]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("passes: [int8]\n", "is a precision"),
        ("precisions: [int3]\n", "unknown precision 'int3'"),
        ("steps: []\n", "only 'passes' and 'precisions'"),
        ("passes: {svd: 0.9}\n", "must be lists"),
        ("passes:\n  - {svd: 0.9, prune-ffn: 0.5}\n", "each pass is"),
        ("passes: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_recipes_are_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=fragment):
        parse_recipe(str(path))
    with pytest.raises(UserError, match="does not exist"):
        parse_recipe(str(tmp_path / "missing.yml"))
