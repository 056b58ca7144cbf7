"""The entry points' persistent compilation cache: on by default in $NTKFUSE_CACHE_DIR (else
~/.cache/ntkfuse/jax), off with --no-compile-cache. Checked through jax.config's values."""
import argparse
from pathlib import Path

import jax
import pytest

from ntkfuse import cli


@pytest.fixture
def restore_config():
    keys = ("jax_enable_compilation_cache", "jax_compilation_cache_dir")
    saved = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)


def test_env_var_sets_the_directory(monkeypatch, tmp_path, restore_config):
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "c"))
    assert cli.use_compile_cache() == str(tmp_path / "c")
    assert jax.config.jax_enable_compilation_cache is True
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")


def test_default_directory(monkeypatch, restore_config):
    monkeypatch.delenv(cli.CACHE_ENV, raising=False)
    cli.use_compile_cache()
    assert jax.config.jax_compilation_cache_dir == str(Path("~/.cache/ntkfuse/jax").expanduser())


@pytest.mark.parametrize("make_parser", [cli._parser, cli._fit_surrogates_parser, cli._finetune_parser])
def test_scripts_have_the_flag(make_parser):
    assert make_parser().parse_args(["--no-compile-cache"]).no_compile_cache is True
    assert make_parser().parse_args([]).no_compile_cache is False


def test_no_compile_cache_turns_it_off(monkeypatch, tmp_path, restore_config):
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path))
    # a bad --model ends with status 2 before any compilation; the switch has been applied by then
    assert cli.compare_main(["--no-compile-cache", "--model", str(tmp_path / "absent"), "--no-progress",
                             "--out", str(tmp_path / "o")]) == 2
    assert jax.config.jax_enable_compilation_cache is False
    assert cli.compare_main(["--model", str(tmp_path / "absent"), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert jax.config.jax_enable_compilation_cache is True
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)


def test_harness_flag(monkeypatch, tmp_path, restore_config):
    from benchmarks import harness
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path))
    ap = argparse.ArgumentParser()
    harness.add_small(ap, "small")
    assert jax.config.jax_enable_compilation_cache is True
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    assert ap.parse_args([]).no_compile_cache is False
    assert ap.parse_args(["--no-compile-cache"]).no_compile_cache is True
    assert jax.config.jax_enable_compilation_cache is False
