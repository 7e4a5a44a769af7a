"""The huge-page malloc re-exec (audiolm_jax/runtime/host_memory.py)."""

import os
import platform
import subprocess
import sys

import pytest

from audiolm_jax.runtime import host_memory as hm

HOST = dict(system="Linux", glibc=(2, 36), thp="madvise", on_cpu=True)


def test_adds_the_tunable_and_a_loop_guard():
    env = hm.reexec_environment({"PATH": "/bin"}, **HOST)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert env["PATH"] == "/bin"
    # the re-executed process sees the guard and does not restart again
    assert hm.reexec_environment(env, **HOST) is None


def test_keeps_other_tunables_and_the_users_choice():
    env = hm.reexec_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **HOST)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    for chosen in ("glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"):
        assert hm.reexec_environment({"GLIBC_TUNABLES": chosen}, **HOST) is None


@pytest.mark.parametrize("change", [
    {"system": "Darwin"}, {"glibc": None}, {"glibc": (2, 34)},
    {"thp": "always"}, {"thp": "never"}, {"thp": None}, {"on_cpu": False},
])
def test_skipped_where_it_cannot_help(change):
    assert hm.reexec_environment({}, **{**HOST, **change}) is None


def test_opt_out():
    assert hm.reexec_environment({hm.OPT_OUT: "0"}, **HOST) is None
    assert hm.reexec_environment({hm.OPT_OUT: "1"}, **HOST) is not None


def test_not_on_cpu_no_reexec(monkeypatch):
    """JAX on an accelerator: its big buffers are device memory, so no restart. Decided from
    JAX_PLATFORMS (its first platform) and, when unset, from installed accelerator plugins."""
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert not hm.jax_runs_on_cpu(os.environ, accelerator_installed=lambda: False)
    on_cpu = hm.jax_runs_on_cpu(os.environ)
    assert hm.reexec_environment(os.environ, **{**HOST, "on_cpu": on_cpu}) is None
    for platforms, cpu in (("cuda,cpu", False), ("cpu", True), ("CPU,cuda", True)):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        # JAX_PLATFORMS wins over what is installed
        for installed in (True, False):
            assert hm.jax_runs_on_cpu(os.environ, accelerator_installed=lambda: installed) is cpu
    monkeypatch.delenv("JAX_PLATFORMS")
    assert not hm.jax_runs_on_cpu(os.environ, accelerator_installed=lambda: True)
    assert hm.jax_runs_on_cpu(os.environ, accelerator_installed=lambda: False)


def test_accelerator_plugins_are_found_without_importing_them(monkeypatch, tmp_path):
    plugins = tmp_path / "jax_plugins" / "xla_fake"
    plugins.mkdir(parents=True)
    (plugins / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hm.accelerator_plugin_installed()
    assert "jax_plugins.xla_fake" not in sys.modules


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hm.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hm.thp_mode(str(f)) == "always"
    assert hm.thp_mode(str(tmp_path / "missing")) is None


def test_the_process_restarts_with_the_same_arguments_and_pid():
    """A real re-exec on this host: same pid and arguments, tunable set exactly when the
    host qualifies."""
    code = ("import os, sys; from audiolm_jax.runtime.host_memory import maybe_reexec, active; "
            "print('start', os.getpid(), flush=True); maybe_reexec(); "
            "print('run', os.getpid(), active(), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", hm.OPT_OUT, "AUDIOLM_JAX_HUGEPAGES_REEXEC")}
    out = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], env=env, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    expected = hm.reexec_environment(env, system=platform.system(), glibc=hm._glibc_version(),
                                     thp=hm.thp_mode(), on_cpu=hm.jax_runs_on_cpu(env)) is not None
    starts = [line for line in out if line.startswith("start")]
    runs = [line for line in out if line.startswith("run")]
    assert len(starts) == (2 if expected else 1)
    assert len({line.split()[1] for line in starts + runs}) == 1  # one pid throughout
    assert runs == [f"run {starts[0].split()[1]} {expected} ['a', '--b=1']"]


def test_only_the_program_entry_point_reexecutes(monkeypatch, capsys):
    """``cli.run()`` called inside a running process (a test, a notebook) must keep that
    process; only ``cli.main`` (the console script, ``python -m audiolm_jax.cli``) restarts."""
    from audiolm_jax import cli

    calls = []
    monkeypatch.setattr(hm, "maybe_reexec", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["audiolm-jax", "--help"])
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 0 and calls == []
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [1]
    capsys.readouterr()
