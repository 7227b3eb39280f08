"""The house rules of the layout, read from the source: what may import what, and who builds parts.

`payment_service/` is what runs in production: it holds no sandbox and no test infrastructure, and
only `bootstrap.py` builds concrete parts (an engine, a gateway, a producer, a repository outside the
unit of work that owns its session). Every module says what it owns in its first line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "payment_service"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

# Constructors of concrete parts, and the only modules besides bootstrap.py allowed to call each:
# the unit of work builds its repositories on its own session, the publisher wraps its Producer.
BUILDERS: dict[str, set[str]] = {
    "create_engine": set(),
    "make_engine": set(),
    "StripeGateway": set(),
    "RazorpayGateway": set(),
    "GuardedGateway": set(),
    "KafkaPublisher": set(),
    "Producer": {"adapters/kafka_publisher.py"},
    "AdminClient": {"adapters/kafka_publisher.py"},
    "SqlOutboxStore": set(),
    "RelayWaker": set(),
    "OutboxRelay": set(),
    "SqlAlchemyApiClientRepository": set(),
    "SqlAlchemyUnitOfWork": set(),
}
REPOSITORY_SUFFIX = "Repository"
FOREIGN_IN_CORE = ("flask", "sqlalchemy", "stripe", "razorpay", "confluent_kafka", "pymysql", "requests", "werkzeug")


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def called_names(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            out.append(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return out


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_product_modules_never_import_the_sandbox_local_parts_or_tests(path: Path) -> None:
    tops = {m.split(".")[0] for m in imported_modules(ast.parse(path.read_text()))}
    outside = tops & {"gateway_sandbox", "localparts", "tests"}
    assert not outside, f"{rel(path)} imports {sorted(outside)}"


def test_no_sandbox_or_launchers_inside_the_product_package() -> None:
    assert not (PACKAGE / "gateways" / "sandbox").exists()
    assert not (PACKAGE / "localparts").exists()


@pytest.mark.parametrize("path", [p for p in MODULES if rel(p) != "bootstrap.py"], ids=rel)
def test_only_bootstrap_builds_concrete_parts(path: Path) -> None:
    module = rel(path)
    built = []
    for name in called_names(ast.parse(path.read_text())):
        allowed = BUILDERS.get(name)
        if allowed is not None and module not in allowed:
            built.append(name)
        elif name.startswith("Sql") and name.endswith(REPOSITORY_SUFFIX) and module != "adapters/unit_of_work.py":
            built.append(name)
    assert not built, f"{module} builds {built}: concrete parts are built in bootstrap.py"


@pytest.mark.parametrize("path", [p for p in MODULES if rel(p).startswith(("domain/", "services/"))], ids=rel)
def test_domain_and_services_import_no_framework_sdk_or_driver(path: Path) -> None:
    tops = {m.split(".")[0] for m in imported_modules(ast.parse(path.read_text()))}
    assert not tops & set(FOREIGN_IN_CORE), f"{rel(path)} imports {sorted(tops & set(FOREIGN_IN_CORE))}"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_each_module_says_what_it_owns_in_its_first_line(path: Path) -> None:
    if path.name == "__init__.py" and not path.read_text().strip():
        return
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.splitlines()[0]) >= 20, f"{rel(path)} has no one-line docstring saying what it owns"
