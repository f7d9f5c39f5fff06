import pytest

from edgekit.errors import UserError
from edgekit.profiles import all_profiles, builtin_profile_names, load_profile

REQUIRED = {"pixel4", "pixel7", "galaxy-s21", "iphone12", "iphone13", "iphone15-pro", "raspberry-pi-4"}


def test_required_profiles_ship_and_validate():
    names = set(builtin_profile_names())
    assert REQUIRED <= names
    for profile in all_profiles():
        assert profile.sources, f"{profile.name} cites no sources"
        assert "cpu_clusters" in profile.sources and "soc" in profile.sources
        assert profile.total_cores >= 4
        if profile.os == "ios":
            assert profile.formats == ["coreml"] and profile.deployment_target.startswith("iOS")


def test_pixel4_defaults_drive_export():
    p = load_profile("pixel4")
    assert p.formats == ["onnx", "tflite"] and "int8" in p.precisions and p.seq_len == 128


def test_user_profile_file(tmp_path):
    text = (load_profile.__globals__["_profile_dir"]() / "pixel4.yaml").read_text()
    path = tmp_path / "mine.yaml"
    path.write_text(text.replace("name: pixel4", "name: my-phone"))
    assert load_profile(str(path)).name == "my-phone"


def test_profiles_accept_every_precision_word_and_refuse_others(tmp_path):
    from typing import get_args

    from edgekit.profiles import Precision
    from edgekit.recipe import PRECISIONS

    assert set(get_args(Precision)) == set(PRECISIONS)
    text = (load_profile.__globals__["_profile_dir"]() / "pixel4.yaml").read_text()
    assert "precisions: [fp32, int8]" in text
    path = tmp_path / "static.yaml"
    path.write_text(text.replace("precisions: [fp32, int8]", "precisions: [int8-static, int4-weights]"))
    assert load_profile(str(path)).precisions == ["int8-static", "int4-weights"]
    path.write_text(text.replace("precisions: [fp32, int8]", "precisions: [int3]"))
    with pytest.raises(UserError):
        load_profile(str(path))


@pytest.mark.parametrize(
    "content, fragment",
    [("name: [unclosed", "not valid YAML"), ("- a\n- b\n", "mapping"), ("name: x\n", "invalid at")],
)
def test_bad_user_profile_is_one_line_user_error(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        load_profile(str(path))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unknown_device_lists_known_ones():
    with pytest.raises(UserError, match="unknown device 'nokia3310'.*pixel4"):
        load_profile("nokia3310")
