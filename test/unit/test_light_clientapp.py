"""The robot's light ClientApp launcher (sakura_nexus.federated.robot.light_clientapp): the `flwr-clientapp`
command on the SuperNode's PATH and its warm, forking server. The exchange itself (Flower's
run_clientapp against a real SuperNode, through SuperNodeSupervisor) runs in test_federated_ros.py and
test_secure_aggregation_ros.py (federated_sync_node); test_federated_e2e.py runs Flower's own command."""

import json
import multiprocessing
import os
import subprocess
import sys
import time

from sakura_nexus.federated.robot import light_clientapp as lc


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


def _serve_printing(path, owner):
    lc._preload = lambda: None
    # fd 1 itself (pytest swaps sys.stdout for its capture; the real server's sys.stdout is fd 1)
    lc._run = lambda argv: os.write(1, f"exchange ran with {' '.join(argv)}\n".encode()) and 7
    lc.serve(path, owner, idle_exit_s=20.0)


def test_launcher_takes_the_warm_path_and_the_exchange_writes_to_the_launchers_stdout(tmp_path):
    home = tmp_path / "flwr-home"
    env = lc.robot_flower_env(str(home), base=dict(os.environ))
    path = env[lc.SOCKET_ENV]
    ctx = multiprocessing.get_context("fork")
    srv = ctx.Process(target=_serve_printing, args=(path, os.getpid()), daemon=True)
    srv.start()
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        cmd = os.path.join(env["PATH"].split(os.pathsep)[0], "flwr-clientapp")
        out = subprocess.run([cmd, "--token", "t1"], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 7, out.stderr
        assert "exchange ran with --token t1" in out.stdout     # the fork wrote to the launcher's own stdout
        log = [json.loads(line) for line in (home / "clientapp.log").read_text().splitlines()]
        assert [r["event"] for r in log if r["event"].startswith("launcher")] == ["launcher_warm"]
    finally:
        srv.terminate()
        srv.join(5)


def test_the_server_command_serves_and_exits_with_its_owner(tmp_path):
    # `python -m sakura_nexus.federated.robot.light_clientapp --serve` is what SuperNodeSupervisor starts: it must
    # import the ClientApp runtime and listen (a module without a __main__ entry exited at once, silently,
    # and every exchange then ran cold)
    home = tmp_path / "flwr-home"
    env = lc.robot_flower_env(str(home), base=dict(os.environ))
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    srv = subprocess.Popen([sys.executable, "-m", "sakura_nexus.federated.robot.light_clientapp", "--serve",
                            env[lc.SOCKET_ENV], str(owner.pid)], env=env)
    try:
        deadline = time.monotonic() + 25
        while not os.path.exists(env[lc.SOCKET_ENV]) and time.monotonic() < deadline and srv.poll() is None:
            time.sleep(0.1)
        assert os.path.exists(env[lc.SOCKET_ENV]), f"server exited with {srv.poll()} without listening"
        assert os.stat(env[lc.SOCKET_ENV]).st_mode & 0o077 == 0
        owner.kill()
        owner.wait()
        assert srv.wait(10) == 0                                  # its SuperNode is gone: so is it
        assert not os.path.exists(env[lc.SOCKET_ENV])
    finally:
        for p in (owner, srv):
            if p.poll() is None:
                p.kill()
                p.wait()
