"""The CLI's contract: every value typed at the entry, defaults in one place, a --help that explains each
option, errors that name the option, the value and the valid choices.

Everything goes through ``robot_policy.cli.main.main`` in-process. Most checks stop at parsing (a bad
value fails before anything runs; ``--help``); a 1-2 episode collect checks what ``overwrite=no`` does to
a real store, and one slow test evaluates an untrained checkpoint to check the sampler options reach it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from robot_policy.bench.infer import train_defaults
from robot_policy.cli.collect import parse_collect_config
from robot_policy.cli.common import ConfigError
from robot_policy.cli.eval import parse_eval_config
from robot_policy.cli.main import main
from robot_policy.cli.options import collect_schema, eval_schema, train_schema
from robot_policy.configuration import describe_type, field_defaults, options, parse_overrides
from robot_policy.data.store import EpisodeStore
from robot_policy.paths import CONFIG_DIR, available_configs
from robot_policy.pipelines.demo import DemoConfig
from robot_policy.train.config import parse_train_config
from robot_policy.train.loop import TrainConfig

TASK = "pybullet_bimanual_lift"
BOOL_RULE = "expected a boolean (true/false, yes/no or 1/0)"


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """The one-line message a failing command prints (without the ``robot-policy:`` prefix)."""
    assert main(argv) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("robot-policy: ")]
    assert len(lines) == 1, lines
    return lines[0].removeprefix("robot-policy: ")


# --- 1. typed values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "value"), [("true", True), ("TRUE", True), ("yes", True), ("Yes", True),
                                             ("1", True), ("false", False), ("no", False), ("NO", False),
                                             ("0", False)])
@pytest.mark.parametrize("option", ["overwrite", "keep_failures", "append", "record_sim_state"])
def test_booleans_are_exactly_true_false_yes_no_1_0(option: str, word: str, value: bool) -> None:
    _, cfg = parse_collect_config(["out=/tmp/unused.zarr", f"{option}={word}"])
    assert getattr(cfg, option) is value


@pytest.mark.parametrize("word", ["maybe", "2", "on", "n", "''", "null"])
@pytest.mark.parametrize("option", ["overwrite", "keep_failures", "append"])
def test_anything_else_is_not_a_boolean(option: str, word: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.zarr"
    shown = {"2": "2", "''": "''", "null": "null"}.get(word, repr(word))
    assert error_of(["collect", f"out={out}", "episodes=1", f"{option}={word}"], capsys) == \
        f"{option}: {BOOL_RULE}, got {shown}"
    assert not out.exists()


def test_booleans_of_train_and_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert error_of(["train", "resume=maybe"], capsys) == f"resume: {BOOL_RULE}, got 'maybe'"
    assert error_of(["train", "progress=2"], capsys) == f"progress: {BOOL_RULE}, got 2"
    assert error_of(["demo", "fresh=maybe"], capsys) == f"fresh: {BOOL_RULE}, got 'maybe'"
    cfg, _ = parse_train_config(["dataset.path=a.zarr", "out=runs/x", "resume=no", "progress=NO"])
    assert cfg.resume is False and cfg.progress is False


def test_overwrite_no_keeps_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dé mo.zarr"  # a space and a non-ASCII character: read as the path as typed
    base = ["collect", f"task={TASK}", f"out={out}", "record_sim_state=false"]
    assert main([*base, "episodes=2"]) == 0
    assert EpisodeStore.open(out).n_episodes == 2
    assert main([*base, "episodes=1", "overwrite=no"]) != 0  # any non-empty string used to be true
    assert EpisodeStore.open(out).n_episodes == 2
    capsys.readouterr()
    assert error_of([*base, "episodes=1", "overwrite=maybe"], capsys) == f"overwrite: {BOOL_RULE}, got 'maybe'"
    assert EpisodeStore.open(out).n_episodes == 2
    # both: an error naming both, not an append that ignores overwrite
    assert error_of([*base, "episodes=3", "overwrite=true", "append=true"], capsys) == (
        f"collect: overwrite=true and append=true contradict each other: overwrite=true deletes the store at "
        f"{out} and records a new one, append=true adds to it; pass one of them")
    assert EpisodeStore.open(out).n_episodes == 2
    capsys.readouterr()
    assert main([*base, "episodes=1", "overwrite=yes"]) == 0  # an explicit true still replaces it
    assert EpisodeStore.open(out).n_episodes == 1


def test_numbers_are_checked_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    train = ["train", "dataset.path=a.zarr", "out=runs/x"]
    assert error_of([*train, "steps=abc"], capsys) == "steps: expected an integer, got 'abc'"
    assert error_of([*train, "steps=1.5"], capsys) == "steps: expected an integer, got 1.5"
    assert error_of([*train, "optim.lr=fast"], capsys) == "optim.lr: expected a number, got 'fast'"
    assert error_of([*train, "dataset.weights=[1,x]"], capsys) == "dataset.weights[1]: expected a number, got 'x'"
    assert error_of([*train, "optim.betas=[0.9]"], capsys) == \
        "optim.betas: expected a list of 2 values, e.g. [a,b], got 1 values [0.9]"
    assert error_of([*train, "out=null"], capsys) == "out: expected a string, got null"
    assert error_of(["eval", "episodes=ten"], capsys) == "episodes: expected an integer, got 'ten'"
    assert error_of(["collect", "out=x.zarr", "task.image_height=big"], capsys) == \
        "task.image_height: expected an integer, got 'big'"
    assert error_of(["bench", "data", "seconds=soon"], capsys) == "seconds: expected a number, got 'soon'"


def test_seed_foo_fails_before_a_store_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.zarr"
    assert error_of(["collect", f"task={TASK}", "episodes=1", f"out={out}", "seed=foo"], capsys) == \
        "seed: expected an integer, got 'foo'"
    assert not out.exists()


# --- 2. one source of defaults ----------------------------------------------------------------------------


def test_defaults_live_in_the_dataclasses() -> None:
    for name in ("train", "eval", "collect"):  # the YAML only chooses config groups
        raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
        assert set(raw) == {"defaults"}, f"configs/{name}.yaml defines {sorted(set(raw) - {'defaults'})}"
    cfg, policy = parse_train_config(["dataset.path=a.zarr", "out=runs/x"])
    defaults = field_defaults(TrainConfig)
    for key in ("steps", "batch_size", "val_every", "ckpt_every", "keep_checkpoints", "optim", "normalizer"):
        assert getattr(cfg, key) == defaults[key], key
    assert (cfg.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.ema_max_decay) == (3000, 3e-4, 200, 0.999)
    assert policy.hidden_size > 0 and cfg.cameras == []  # rdt_small on the default task's (no) cameras
    bench = train_defaults()  # bench infer reads them from TrainConfig, not from a YAML
    assert bench["steps"] == 3000 and bench["optim"]["lr"] == 3e-4 and bench["batch_size"] == defaults["batch_size"]


# --- 3. a CLI that explains itself ----------------------------------------------------------------------------


def _literal(value: object) -> str:
    from robot_policy.cli.common import _literal as literal

    return literal(value)


@pytest.mark.parametrize(("argv", "schema", "groups"), [
    (["collect"], collect_schema, ("task",)),
    (["eval"], eval_schema, ("task",)),
    (["train"], train_schema, ("task", "policy")),
    (["demo"], lambda: DemoConfig, ()),
    (["bench", "data"], lambda: __import__("robot_policy.bench.data", fromlist=["x"]).DataBenchConfig, ()),
    (["bench", "sim"], lambda: __import__("robot_policy.bench.sim", fromlist=["x"]).SimBenchConfig, ()),
    (["bench", "infer"], lambda: __import__("robot_policy.bench.infer", fromlist=["x"]).InferBenchConfig, ()),
    (["bench", "success"], lambda: __import__("robot_policy.bench.runner", fromlist=["x"]).SuccessBenchConfig, ()),
])
def test_help_lists_every_option_with_type_default_and_doc(argv: list[str], schema: object, groups: tuple[str, ...],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--help"]) == 0
    text = capsys.readouterr().out
    assert "_MISSING_TYPE" not in text and "dataclasses." not in text
    lines = text.splitlines()
    for opt in options(schema()):  # type: ignore[operator]
        assert opt.doc, f"{opt.name} has no #: doc"
        if opt.name in groups:
            assert any(line.startswith(f"  {opt.name}=NAME (default ") for line in lines), opt.name
            assert opt.doc in text
            continue
        row = next((line for line in lines if line.startswith(f"  {opt.name} ")), None)
        assert row is not None, f"{opt.name} is not listed"
        for part in (describe_type(opt.type), _literal(opt.default), opt.doc):
            assert part in row, (opt.name, part, row)
    for group in ("task", "policy", "embodiment"):
        assert f"(configs/{group}): {', '.join(available_configs(group))}" in text


def test_demo_help_shows_list_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  train_overrides "))
    assert "list[str]" in row and " [] " in row


def test_unknown_config_names_list_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    policies, tasks = ", ".join(available_configs("policy")), ", ".join(available_configs("task"))
    assert error_of(["train", "policy=rdt_huge"], capsys) == f"unknown policy 'rdt_huge'; available: {policies}"
    assert error_of(["collect", "task=no_such_task", "out=x.zarr"], capsys) == \
        f"unknown task 'no_such_task'; available: {tasks}"
    assert error_of(["demo", "task=lift"], capsys) == f"demo: task: unknown 'lift'; available: {tasks}"


def test_unknown_keys_name_the_closest_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert error_of(["train", "stepz=3"], capsys) == "unknown option 'stepz'; did you mean 'steps'?"
    assert error_of(["train", "+stepz=3"], capsys) == "unknown option 'stepz'; did you mean 'steps'?"
    assert error_of(["train", "optim.lrr=1"], capsys) == "unknown option 'optim.lrr'; did you mean 'optim.lr'?"
    assert error_of(["train", "policy.hiden_size=8"], capsys) == \
        "unknown option 'policy.hiden_size'; did you mean 'policy.hidden_size'?"
    assert error_of(["collect", "out=x.zarr", "task.camera=[front]"], capsys) == \
        "unknown option 'task.camera'; did you mean 'task.cameras'?"
    # train takes the task as a mapping in its library config; the CLI checks its keys as collect does
    for override in ("task.max_stepz=3", "+task.max_stepz=3"):
        assert error_of(["train", override, "dataset.path=x.zarr", "out=run"], capsys) == \
            "unknown option 'task.max_stepz'; did you mean 'task.max_steps'?"
    assert error_of(["train", "task.max_steps=abc", "dataset.path=x.zarr", "out=run"], capsys) == \
        "task.max_steps: expected an integer, got 'abc'"
    assert error_of(["bench", "data", "secondz=1"], capsys) == "unknown option 'secondz'; did you mean 'seconds'?"
    # a mapping option takes new keys, with Hydra's +
    assert error_of(["eval", "policy_kwargs.noise=0.0"], capsys) == \
        "policy_kwargs has no key 'noise'; add one with +policy_kwargs.noise=0.0"
    _, _, cfg = parse_eval_config(["+policy_kwargs.noise=0.0"])
    assert cfg.policy_kwargs == {"noise": 0.0}


def test_values_hydra_cannot_read_are_quoted_or_explained(capsys: pytest.CaptureFixture[str]) -> None:
    _, cfg = parse_collect_config(["out=/tmp/dé mo.zarr"])
    assert cfg.out == "/tmp/dé mo.zarr"
    _, cfg = parse_collect_config(["out='/tmp/a,b.zarr'"])  # Hydra's own quoting still works
    assert cfg.out == "/tmp/a,b.zarr"
    train, _ = parse_train_config(["dataset.paths=[/data/é.zarr,/data/b c.zarr]", "out=/tmp/ü"])
    assert [d.path for d in train.datasets] == ["/data/é.zarr", "/data/b c.zarr"] and train.out == "/tmp/ü"
    demo = parse_overrides(DemoConfig, ["train_overrides=[batch_size=8,val_every=5]"])  # '=' in list elements
    assert demo.train_overrides == ["batch_size=8", "val_every=5"]
    assert error_of(["collect", "out=/tmp/a,b"], capsys) == ("out: '/tmp/a,b' reads as several values (a comma "
                                                             "separates them in Hydra's grammar): write a list as "
                                                             "out=[a,b], or quote a string with a comma: out='/tmp/a,b'")
    assert error_of(["collect", "tâche=1"], capsys).endswith("an option's name is a dotted ASCII name, "
                                                              "e.g. task.cameras=[front]")


def test_sampler_is_an_eval_option(capsys: pytest.CaptureFixture[str]) -> None:
    from robot_policy.eval.harness import EvalConfig

    assert EvalConfig(sampler="ddim", sampler_steps=10).policy_loader_kwargs() == {"sampler": "ddim", "num_steps": 10}
    assert error_of(["eval", "sampler=euler"], capsys) == \
        "eval: sampler: unknown 'euler'; samplers: ddpm, ddim, dpmsolver++"
    assert error_of(["eval", "policy=scripted", "sampler=ddim"], capsys) == (
        "sampler=ddim sampler_steps=null: they choose how a diffusion checkpoint samples; 'scripted' is not a "
        "checkpoint directory")
    with pytest.raises(ConfigError, match="are both given: use sampler"):
        parse_eval_config(["sampler=ddim", "+policy_kwargs.sampler=ddpm"])


@pytest.mark.slow
def test_eval_sampler_reaches_the_checkpoint_and_eval_json(tmp_path: Path) -> None:
    from robot_policy.envs.registry import make_env
    from robot_policy.eval.policies import load_policy

    store, run = tmp_path / "s.zarr", tmp_path / "run"
    assert main(["collect", f"task={TASK}", "episodes=1", f"out={store}", "record_sim_state=false"]) == 0
    assert main(["train", f"dataset.path={store}", f"out={run}", "policy=rdt_tiny", "steps=1", "batch_size=4",
                 "val_fraction=0", "torch_threads=1", "progress=false"]) == 0
    ckpt = run / "checkpoints" / "latest"
    task, policy, cfg = parse_eval_config([f"policy={ckpt}", "sampler=ddim", "sampler_steps=3"])
    loaded = load_policy(policy, make_env(task), **cfg.policy_loader_kwargs())
    assert (loaded.base.sampler.kind, loaded.base.sampler.num_steps) == ("ddim", 3)  # type: ignore[attr-defined]
    for extra, expected in ((["sampler=ddim", "sampler_steps=3"], ("ddim", 3)), ([], ("dpmsolver++", 5))):
        out = tmp_path / f"eval{len(extra)}"
        assert main(["eval", f"policy={ckpt}", "episodes=1", "workers=1", "videos=0", f"out={out}", *extra]) == 0
        report = json.loads((out / "eval.json").read_text())
        assert (report["sampler"], report["sampler_steps"]) == expected  # the checkpoint's own when not given


def test_a_nested_unknown_key_names_the_closest_nested_option() -> None:
    from robot_policy.configuration import to_dataclass
    from robot_policy.train.loop import TrainConfig

    with pytest.raises(ConfigError, match=r"unknown option 'optim.lrr'; did you mean 'optim.lr'\?"):
        to_dataclass(TrainConfig, {"out": "x", "optim": {"lrr": 1}})
