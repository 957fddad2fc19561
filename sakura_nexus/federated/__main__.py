"""``python -m sakura_nexus.federated aggregator|supernode ...``.

Same as ``sakura-nexus aggregator|supernode``.
"""

import sys

from .fleet.superlink import aggregator_main
from .robot.supernode import supernode_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("aggregator", "supernode"):
        print("usage: python -m sakura_nexus.federated {aggregator|supernode} [options]", file=sys.stderr)
        return 2
    fn = aggregator_main if argv[0] == "aggregator" else supernode_main
    return fn(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
