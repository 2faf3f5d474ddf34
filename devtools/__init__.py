"""Development tools shared by the test suite, scripts/ and benchmarks/:
model builders, free ports, fuzz generators. Not shipped in the wheel
(pyproject.toml packages only dlserve, serving and training), and never
imports from tests/."""
