"""Configs that validate but cannot sort, and hostile YAML: each is one short ConfigError naming the field.

Issue 18, "Start-up and configs". Library level (no model, no camera): the line config, its bins file
and the YAML reader under them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sorting.config import load_config, parse_overrides, read_yaml
from sorting.errors import ConfigError
from sorting.serving.line_config import load_line_config
from sorting.serving.policy import load_policy_config

pytestmark = pytest.mark.faults

BINS = {
    "name": "two-bins",
    "bins": [{"id": 1, "name": "white", "distance_px": 200, "address": 0},
             {"id": 2, "name": "dark", "distance_px": 260, "address": 1}],
    "reject": {"id": 0, "name": "reject"},
    "rules": [{"name": "white", "bin": 1, "colour": ["white"]}, {"name": "dark", "bin": 2, "colour": ["black"]}],
}
MAX_MESSAGE = 300  # one short line, never the expanded input


def write_line(tmp_path: Path, bins: dict | None = None, **sections) -> Path:
    """A 640x480 line along +x with a px bins file next to it; ``sections`` replace whole sections."""
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump(bins or BINS), encoding="utf-8")
    line = {
        "name": "faults",
        "camera": {"source": "synthetic:0", "fps": 30, "width": 640, "height": 480},
        "belt": {"speed_px_s": 300.0, "direction": "+x"},
        "tracking": {"decision_line_px": 480},
        "policy": {"bins": "bins.yaml"},
        "log": {"path": str(tmp_path / "decisions.sqlite")},
        **sections,
    }
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(line), encoding="utf-8")
    return path


def config_error(call, *args, **kwargs) -> str:
    """The message of the ConfigError ``call`` raises; it must be one short line."""
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < MAX_MESSAGE, message[:2000]
    return message


def test_the_sample_lines_still_load(repo_root) -> None:
    for name in ("line-colour-6bin.yaml", "line-fibre-colour.yaml"):
        cfg = load_line_config(repo_root / "serving" / name)
        assert cfg.policy.bins.is_file()


@pytest.mark.parametrize("override, field", [
    ("belt.speed_px_s=.inf", "belt.speed_px_s"),
    ("belt.speed_px_s=.nan", "belt.speed_px_s"),
    ("ejector.pulse_ms=.inf", "ejector.pulse_ms"),
    ("tracking.decision_line_px=.nan", "tracking.decision_line_px"),
    ("segmentation.static_s=.inf", "segmentation.static_s"),
    ("telemetry.buckets_s=[0.01, .inf]", "telemetry.buckets_s.1"),
    ("calibration.white_balance=[1.0, .nan, 1.0]", "calibration.white_balance.1"),
])
def test_a_non_finite_number_is_refused_naming_the_field(tmp_path, override, field) -> None:
    """``belt.speed_px_s: .inf`` used to validate and decide 0 items with rc 0."""
    message = config_error(load_line_config, write_line(tmp_path), [override])
    assert field in message and "finite" in message


def test_a_non_finite_bin_distance_is_refused(tmp_path) -> None:
    bins = yaml.safe_load(yaml.safe_dump(BINS))
    bins["bins"][0]["distance_px"] = float("inf")
    message = config_error(load_line_config, write_line(tmp_path, bins))
    assert "bins.0.distance_px" in message and "finite" in message


@pytest.mark.parametrize("direction, line_px, expected", [
    ("+x", 900, "tracking.decision_line_px 900 is outside the 640-px-wide frame"),
    ("-x", -5, "tracking.decision_line_px -5 is outside the 640-px-wide frame"),
    ("+y", 600, "tracking.decision_line_px 600 is outside the 480-px-high frame"),
])
def test_a_decision_line_outside_the_frame_is_refused(tmp_path, direction, line_px, expected) -> None:
    """A decision line no item can cross sends every item to reject as ``lost``."""
    path = write_line(tmp_path, belt={"speed_px_s": 300.0, "direction": direction},
                      tracking={"decision_line_px": line_px})
    message = config_error(load_line_config, path)
    assert expected in message


def test_a_decision_line_is_not_checked_when_the_frame_size_is_unknown(tmp_path) -> None:
    path = write_line(tmp_path, camera={"source": "synthetic:0"}, tracking={"decision_line_px": 900})
    assert load_line_config(path).tracking.decision_line_px == 900


@pytest.mark.parametrize("override, field", [
    ("segmentation.ignore_rois=[[600, 0, 100, 20]]", "segmentation.ignore_rois"),
    ("calibration.reference_roi=[0, 470, 640, 20]", "calibration.reference_roi"),
    ("calibration.reference_roi=[10, 10, 0, 20]", "calibration.reference_roi"),
])
def test_a_region_outside_the_frame_is_refused(tmp_path, override, field) -> None:
    message = config_error(load_line_config, write_line(tmp_path), [override])
    assert field in message


@pytest.mark.parametrize("override, field", [
    ("segmentation.scale=0", "segmentation.scale"),  # used to be a traceback from BeltSegmenter
    ("segmentation.scale=2", "segmentation.scale"),
    ("segmentation.body_prominence=1", "segmentation.body_prominence"),  # 1 / (1 - p)
    ("segmentation.threshold=300", "segmentation.threshold"),
    ("segmentation.shape_check_every=0", "segmentation.shape_check_every"),  # modulo by zero
    ("tracking.classify_every=0", "tracking.classify_every"),
    ("tracking.max_views=0", "tracking.max_views"),  # never classified: every item lost
    ("tracking.min_hits=0", "tracking.min_hits"),
    ("tracking.typical_area_window=0", "tracking.typical_area_window"),
    ("tracking.velocity_smoothing=1.5", "tracking.velocity_smoothing"),
    ("calibration.white_balance=[1.0, -1.0, 1.0]", "calibration.white_balance"),
])
def test_a_value_out_of_its_range_is_refused_at_load(tmp_path, override, field) -> None:
    message = config_error(load_line_config, write_line(tmp_path), [override])
    assert field in message


def test_two_bins_on_one_coil_are_refused_in_the_bins_file(tmp_path) -> None:
    """Accepted before: ``pulse`` fired one coil for both bins."""
    bins = yaml.safe_load(yaml.safe_dump(BINS))
    bins["bins"][1]["address"] = 0
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump(bins), encoding="utf-8")
    message = config_error(load_policy_config, tmp_path / "bins.yaml")
    assert "address 0" in message and "white" in message and "dark" in message


def test_a_default_address_counts_as_an_address(tmp_path) -> None:
    bins = yaml.safe_load(yaml.safe_dump(BINS))
    bins["bins"][0]["address"] = 2  # bin 2 has no address -> its id, 2
    del bins["bins"][1]["address"]
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump(bins), encoding="utf-8")
    assert "address 2" in config_error(load_policy_config, tmp_path / "bins.yaml")


def test_an_actuator_address_override_onto_another_bins_coil_is_refused_at_load(tmp_path) -> None:
    message = config_error(load_line_config, write_line(tmp_path), ["actuator.addresses={2: 0}"])
    assert "actuator.addresses" in message and "address 0" in message


def test_an_actuator_address_for_an_unknown_bin_is_refused_at_load(tmp_path) -> None:
    """Found only by the builder before, after the model was loaded."""
    message = config_error(load_line_config, write_line(tmp_path), ["actuator.addresses={7: 9}"])
    assert "actuator.addresses" in message and "7" in message


def test_a_cross_field_error_is_one_line_without_the_section(tmp_path) -> None:
    """A model validator's error used to print the whole section it validated (``got {...}``)."""
    path = write_line(tmp_path, belt={"direction": "+x", "px_per_m": 500.0, "note": None})
    message = config_error(load_line_config, path)
    assert "belt.note" in message  # the unknown key is named
    path = write_line(tmp_path, belt={"direction": "+x", "px_per_m": 500.0})
    message = config_error(load_line_config, path)
    assert "give belt.speed_px_s" in message and "px_per_m" in message and "{" not in message


def test_a_huge_wrong_value_is_not_echoed(tmp_path) -> None:
    path = write_line(tmp_path, name=["x" * 1000] * 1000)
    message = config_error(load_line_config, path)
    assert "'name'" in message


# -- the YAML reader ---------------------------------------------------------------------------------------

def alias_bomb(levels: int, width: int = 10) -> str:
    """``levels`` nested anchors of ``width`` aliases each: width**levels strings once expanded."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append("name: [" + ", ".join([f"*a{levels - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path) -> None:
    """A bomb under a typed key (``name:``) took 55 s and 2.7 GB before a MemoryError; this one is
    small enough (10**6 strings) to survive on the old code, which echoed it whole in the message."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(6), encoding="utf-8")
    message = config_error(read_yaml, path)
    assert "alias" in message and str(path) in message


def test_a_few_aliases_are_still_fine(tmp_path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("base: &b {x: 1, y: [1, 2]}\nother: *b\nmerged: {<<: *b, x: 2}\n", encoding="utf-8")
    assert read_yaml(path) == {"base": {"x": 1, "y": [1, 2]}, "other": {"x": 1, "y": [1, 2]},
                               "merged": {"x": 2, "y": [1, 2]}}


def test_a_bomb_in_an_override_is_refused() -> None:
    levels = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    assert "alias" in config_error(parse_overrides, ["name=[" + ", ".join(levels) + "]"])


@pytest.mark.parametrize("text, key, line", [
    ("name: a\nbelt: {speed_px_s: 1}\nname: b\n", "name", 3),
    ("belt:\n  speed_px_s: 300\n  direction: +x\n  speed_px_s: .inf\n", "speed_px_s", 4),
])
def test_a_duplicate_key_is_an_error_not_a_silent_override(tmp_path, text, key, line) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    message = config_error(read_yaml, path)
    assert f"duplicate key '{key}'" in message and f"line {line}" in message


def test_a_config_that_is_not_utf8_is_one_line(tmp_path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert "UTF-8" in config_error(read_yaml, path)


def test_a_config_path_that_is_a_folder_is_named_so(tmp_path) -> None:
    assert "is a folder" in config_error(read_yaml, tmp_path)


def test_a_deeply_nested_config_is_one_line(tmp_path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert "nested" in config_error(read_yaml, path)


def test_an_empty_line_config_names_what_is_missing(tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    message = config_error(load_line_config, path)
    assert "belt" in message and "policy" in message


def test_a_line_whose_bins_file_is_missing_names_it(tmp_path) -> None:
    path = write_line(tmp_path)
    (tmp_path / "bins.yaml").unlink()
    assert "bins.yaml" in config_error(load_line_config, path)


def test_a_training_recipe_refuses_non_finite_numbers(repo_root) -> None:
    from sorting.training.config import TrainConfig

    message = config_error(load_config, TrainConfig, repo_root / "training" / "synthetic-quick.yaml",
                           ["optim.lr=.nan"])
    assert "optim.lr" in message and "finite" in message


def test_a_config_path_that_is_a_device_is_named_so() -> None:
    """``policy.bins: /dev/zero`` said 'config file not found'."""
    assert "not a regular file" in config_error(read_yaml, "/dev/zero")


@pytest.mark.parametrize("command", [["train"], ["cross-validate", "-m", "missing.csv"]])
def test_a_belt_detector_recipe_given_to_train_names_its_own_command(repo_root, command, capsys) -> None:
    from sorting.cli import main

    recipe = str(repo_root / "training" / "belt-detector.yaml")
    assert main([*command, "--config" if command[0] == "train" else "-c", recipe]) == 2
    err = capsys.readouterr().err
    assert "belt detector's recipe" in err and "train-belt-detector" in err and err.count("\n") == 1
