"""Stand-ins for OpenSSH's ``ssh`` and ``scp`` for the fast tests of ``decnn deploy``: a "board" is a folder
``$FAKE_BOARDS/<address>`` that serves as its home; ``ssh HOST COMMAND`` runs COMMAND here with HOME set to it,
``scp`` copies to and from it. A host without a folder answers as an unreachable one does; none reaches a
package index. The real ones, against
real sshd's in network namespaces, are the slow tests' (tests/test_cluster_netns.py).

    write_fakes(bin_dir)        # bin_dir/ssh and bin_dir/scp, to put first on PATH
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

_WITH_VALUE = {"ssh": {"-F", "-o", "-i", "-p", "-l", "-J"}, "scp": {"-F", "-o", "-i", "-P", "-l", "-J"}}
UNREACHABLE = "ssh: connect to host {host} port 22: No route to host"


def _split(argv: list[str], program: str) -> list[str]:
    """The arguments after ``program``'s (ssh's or scp's) options."""
    rest, i = [], 0
    while i < len(argv):
        if argv[i] in _WITH_VALUE[program] and not rest:
            i += 2
        elif argv[i].startswith("-") and not rest:
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    return rest


def _home(target: str) -> Path:
    return Path(os.environ["FAKE_BOARDS"]) / target.split("@")[-1]


def ssh(argv: list[str]) -> int:
    target, *command = _split(argv, "ssh")
    home = _home(target)
    if not home.is_dir():
        print(UNREACHABLE.format(host=target), file=sys.stderr)
        return 255
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22",
           "https_proxy": "http://127.0.0.1:9"}  # a board that reaches no package index
    return subprocess.run(["sh", "-c", " ".join(command)], env=env).returncode


def scp(argv: list[str]) -> int:
    *sources, dest = _split(argv, "scp")
    for path in [*sources, dest]:
        if ":" in path and not _home(path.split(":")[0]).is_dir():
            print(UNREACHABLE.format(host=path.split(":")[0]) + "\nscp: Connection closed", file=sys.stderr)
            return 255
    dest = dest.split(":", 1)[-1]
    for source in sources:
        shutil.copy2(source.split(":", 1)[-1], dest)
    return 0


def write_fakes(bin_dir: Path) -> Path:
    """``ssh`` and ``scp`` scripts in ``bin_dir`` that run this module's stand-ins."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("ssh", "scp"):
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                          f"import fake_openssh\nsys.exit(fake_openssh.{name}(sys.argv[1:]))\n")
        script.chmod(0o755)
    return bin_dir
