"""Every `mamview bench …`: one module per benchmark (`imports`, `infer`, `net`, `gui`), each with
`measure(...)`, which returns the figures as a JSON-ready dict (with "benchmark" and "machine"),
and `rows(fig)`, which words them as (label, value) rows for `format.report`; `mamview.cli.bench`
prints that table and writes the JSON. `dcmtk` drives dcmtk's peers for `net` and the tests."""
