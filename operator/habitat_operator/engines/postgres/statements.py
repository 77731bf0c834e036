"""A migration script's statements, split and classified by PostgreSQL's own parser (pglast).

The operator runs a script statement by statement, and must know before it runs any whether one
ends or starts a transaction (COMMIT, ROLLBACK, BEGIN, PREPARE TRANSACTION...): inside the
transaction it opens for a migration, such a statement would commit or undo part of the migration
behind its back. A script the parser refuses is kept whole, as one query string: PostgreSQL parses
such a string entirely before it runs any of it, so it refuses the whole and names the error's line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pglast import parser

# TransactionStmt kinds that end or start a transaction; savepoints stay inside one and are fine.
_ENDS_OR_STARTS = frozenset(
    {
        "TRANS_STMT_BEGIN",
        "TRANS_STMT_START",
        "TRANS_STMT_COMMIT",  # COMMIT and END
        "TRANS_STMT_ROLLBACK",  # ROLLBACK and ABORT
        "TRANS_STMT_PREPARE",
        "TRANS_STMT_COMMIT_PREPARED",
        "TRANS_STMT_ROLLBACK_PREPARED",
    }
)
# The first keyword of every TransactionStmt: only statements starting so are parsed on their own.
_TRANSACTION_KEYWORD = re.compile(
    r"(?:begin|start|commit|end|rollback|abort|prepare|savepoint|release)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Statement:
    offset: int  # where it starts in the script, in characters
    sql: str
    ends_transaction: bool = False  # COMMIT, ROLLBACK, BEGIN, PREPARE TRANSACTION...


@dataclass(frozen=True)
class SyntaxProblem:
    offset: int  # in characters
    message: str


@dataclass(frozen=True)
class ParsedScript:
    statements: tuple[Statement, ...]
    syntax_error: SyntaxProblem | None = None  # then the one statement is the whole script


def parse(text: str) -> ParsedScript:
    """CPU-heavy (about 0.4 s per MB): call it off the event loop."""
    try:
        slices = parser.split(text, with_parser=True, only_slices=True)
    except parser.ParseError as error:
        location = error.args[1] if len(error.args) > 1 else None
        problem = SyntaxProblem(max(int(location or 0), 0), str(error.args[0]))
        return ParsedScript((Statement(0, text),), problem)
    return ParsedScript(tuple(_statement(text, piece) for piece in slices))


def line_of(text: str, offset: int) -> int:
    """The 1-based line of `text` at `offset`."""
    return text.count("\n", 0, offset) + 1


def _statement(text: str, piece: slice) -> Statement:
    """A slice of the parser's split: it starts at the statement's first token, after any comment."""
    sql = text[piece]
    return Statement(piece.start, sql, _ends_transaction(sql))


def _ends_transaction(sql: str) -> bool:
    if not _TRANSACTION_KEYWORD.match(sql):
        return False
    parsed = json.loads(parser.parse_sql_json(sql))
    return any(
        stmt["stmt"].get("TransactionStmt", {}).get("kind") in _ENDS_OR_STARTS for stmt in parsed["stmts"]
    )
