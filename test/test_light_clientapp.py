"""The robot's light ClientApp launcher (sakura_nexus.federated.light_clientapp): the `flwr-clientapp`
command on the SuperNode's PATH and its warm, forking server. The exchange itself (Flower's
run_clientapp against a real SuperNode) runs in test_federated_e2e.py, which goes through it."""

import multiprocessing
import os
import subprocess
import sys
import time

from sakura_nexus.federated import light_clientapp as lc


def test_robot_flower_env_puts_the_light_command_first_on_path(tmp_path):
    env = lc.robot_flower_env(str(tmp_path / "flwr-home"), base={"PATH": "/usr/bin"})
    first = env["PATH"].split(os.pathsep)[0]
    cmd = os.path.join(first, "flwr-clientapp")
    assert os.access(cmd, os.X_OK)
    assert env[lc.SOCKET_ENV].endswith(".sock") and len(env[lc.SOCKET_ENV]) <= 100
    # the launcher imports the standard library only: no numpy, no flwr, no sakura_nexus.federated package
    probe = subprocess.run([sys.executable, "-I", "-c",
                            "import importlib.util, sys\n"
                            f"spec = importlib.util.spec_from_file_location('m', {lc.__file__!r})\n"
                            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
                            "print(sorted(k for k in sys.modules if k.split('.')[0] in "
                            "('numpy', 'flwr', 'torch', 'sakura_nexus')))"],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


def _serve(path, owner):
    lc._preload = lambda: None                         # no Flower here: the fork/reply mechanics only
    lc._run = lambda argv: 40 + len(argv)              # what the forked exchange "returns"
    lc.serve(path, owner, idle_exit_s=20.0)


def test_warm_server_forks_one_exchange_per_request_and_returns_its_exit_code(tmp_path):
    path = str(tmp_path / "s.sock")
    assert lc._ask(path, ["--token", "x"]) is None     # no server: the launcher's cold path
    ctx = multiprocessing.get_context("fork")
    srv = ctx.Process(target=_serve, args=(path, os.getpid()), daemon=True)
    srv.start()
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lc._ask(path, ["--token", "x"]) == 42
        assert lc._ask(path, ["a", "b", "c"]) == 43    # a second exchange: another fork, same server
    finally:
        srv.terminate()
        srv.join(5)
