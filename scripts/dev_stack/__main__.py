"""`scripts/dev-stack up|down|status|env`."""

from __future__ import annotations

import sys

from dev_stack.common import STACK_DIR, StackError
from dev_stack.stack import down, status, up


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    try:
        if command == "up":
            print(up())
        elif command == "down":
            down()
        elif command == "status":
            return 0 if status() else 1
        elif command == "env":
            print((STACK_DIR / "env").read_text(), end="")
        else:
            print("usage: dev-stack up|down|status|env", file=sys.stderr)
            return 2
    except StackError as error:
        print(f"dev-stack: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
