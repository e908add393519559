"""The config loader: typed values, unknown keys listed, errors that name file, line and field."""

from pathlib import Path

import pytest

from align.config import ConfigError, RecipeConfig, load_config, parse_overrides

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("recipes/configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(RecipeConfig, path)
    assert isinstance(cfg, RecipeConfig)
    assert Path(cfg.constitution).exists() or (Path(__file__).parent.parent / cfg.constitution).exists()


def test_shipped_configs_exist():
    assert any(p.name == "cai_tiny.yaml" for p in CONFIGS)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_values_reach_nested_dataclasses(tmp_path):
    path = write(tmp_path, "run_name: x\nsft:\n  learning_rate: 1e-3\n  lora:\n    enabled: true\n    r: 4\n")
    cfg = load_config(RecipeConfig, path)
    assert cfg.run_name == "x"
    assert cfg.sft.learning_rate == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; we accept it
    assert cfg.sft.lora.enabled and cfg.sft.lora.r == 4
    assert cfg.dpo.beta == 0.1  # untouched defaults stay the paper's


def test_unknown_key_lists_valid_keys_with_line(tmp_path):
    path = write(tmp_path, "run_name: x\nsft:\n  learning_rate: 0.1\n  learnin_rate: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(RecipeConfig, path)
    msg = str(e.value)
    assert f"{path}:4: sft.learnin_rate" in msg
    assert "unknown key 'learnin_rate'" in msg and "learning_rate" in msg and "per_device_train_batch_size" in msg


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe.yaml:2: ppx: unknown key 'ppx'.*valid keys: .*critique_revise"):
        load_config(RecipeConfig, write(tmp_path, "seed: 1\nppx: {}\n"))


def test_bad_value_names_field_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\ncritique_revise:\n  sampling:\n    batch_size: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(RecipeConfig, path)
    assert str(e.value).startswith(f"{path}:4: critique_revise.sampling.batch_size: expected an integer")


def test_bool_is_not_an_int_and_literal_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="seed: expected an integer, got True"):
        load_config(RecipeConfig, write(tmp_path, "seed: true\n"))
    with pytest.raises(ConfigError, match=r"report_to: 'slack' is not one of \['none', 'wandb', 'tensorboard'\]"):
        load_config(RecipeConfig, write(tmp_path, "report_to: slack\n"))


def test_range_checks_raise_rather_than_rewrite(tmp_path):
    with pytest.raises(ConfigError, match="rounds must be between 1 and 4"):
        load_config(RecipeConfig, write(tmp_path, "critique_revise:\n  rounds: 9\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(RecipeConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"recipe.yaml:2: invalid YAML"):
        load_config(RecipeConfig, write(tmp_path, "seed: 1\nsft: a: b\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(RecipeConfig, write(tmp_path, "- a\n- b\n"))


def test_command_line_overrides_win_and_are_named(tmp_path):
    path = write(tmp_path, "seed: 1\nsft:\n  learning_rate: 0.1\n")
    cfg = load_config(RecipeConfig, path, ["--sft.learning_rate=0.5", "--seed", "7", "dpo.beta=0.3"])
    assert (cfg.sft.learning_rate, cfg.seed, cfg.dpo.beta) == (0.5, 7, 0.3)
    with pytest.raises(ConfigError, match="command line: sft.max_steps: expected an integer"):
        load_config(RecipeConfig, path, ["--sft.max_steps=lots"])


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b=1", "--c", "x y", "d=[1, 2]", "--e-f=true"]) == {
        "a.b": 1,
        "c": "x y",
        "d": [1, 2],
        "e_f": True,
    }
    with pytest.raises(ConfigError, match="cannot read override"):
        parse_overrides(["lonely"])


def alias_bomb(levels: int = 9) -> str:
    """Nine lines of YAML whose aliases stand for 9^9 (387 million) keys if every alias is walked."""
    lines = ['a0: &a0 {x: "lol"}']
    for level in range(1, levels):
        refs = ", ".join(f"k{j}: *a{level - 1}" for j in range(9))
        lines.append(f"a{level}: &a{level} {{{refs}}}")
    return "\n".join(lines) + "\n"


LOAD_BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway loader fails here instead of the machine
from align.config import ConfigError, RecipeConfig, load_config
try:
    load_config(RecipeConfig, sys.argv[1])
except ConfigError as err:
    print(err)
"""


def test_an_alias_bomb_is_rejected_quickly(tmp_path):
    """The YAML parser shares aliased nodes, but the line finder walked every path through them: 9 lines held
    the loader at 1.9 GB for minutes. Now the unknown key is reported at once."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("run_name: bomb\n" + alias_bomb())
    result = subprocess.run([sys.executable, "-c", LOAD_BOMB, str(bomb)], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith(f"{bomb}:2: a0: unknown key 'a0' in RecipeConfig"), result.stderr[-2000:]


def test_keys_reached_through_an_alias_get_the_line_of_their_section(tmp_path):
    path = tmp_path / "aliased.yaml"
    path.write_text("critique_revise:\n  sampling: &s {max_new_tokens: 8}\npreferences:\n  prompt_limits: *s\n")
    with pytest.raises(ConfigError, match=r"aliased.yaml:4: preferences.prompt_limits.max_new_tokens: unknown key"):
        load_config(RecipeConfig, path)
