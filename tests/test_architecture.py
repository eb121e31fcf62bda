"""Imports between the packages go one way: minimodel <- data_prep, eval <- scripts."""
import textwrap

from scripts.check_imports import ROOT, find_imports, graph, main, violations


def test_packages_import_one_way():
    imports = find_imports(ROOT)
    bad = violations(imports)
    assert not bad, "imports against the allowed direction:\n" + "\n".join(map(str, bad))
    edges = graph(imports)
    # the scan really read the tree: the users of the library are seen importing it
    assert {"data_prep", "eval", "scripts"} <= {src for src, targets in edges.items() if "minimodel" in targets}


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_every_kind_of_import_is_seen_and_named_by_file_and_line(tmp_path, capsys):
    _write(tmp_path, "minimodel/__init__.py", "")
    _write(tmp_path, "minimodel/a.py", """\
        import json
        from minimodel import b
        from . import c

        def lazy():
            from data_prep.sft import read_sft
            import eval.bpb
            import importlib
            return importlib.import_module("scripts.plan")
        """)
    _write(tmp_path, "data_prep/x.py", "from minimodel.io import write_json\nfrom eval import models\n")
    _write(tmp_path, "eval/y.py", "from minimodel.io import read_toml\nimport data_prep.shards\nfrom scripts import plan\n")
    _write(tmp_path, "scripts/z.py", "import minimodel, data_prep.shards, eval.bpb\n")
    bad = violations(find_imports(tmp_path))
    assert [(str(i.path), i.line, i.target) for i in bad] == [
        ("data_prep/x.py", 2, "eval"),
        ("eval/y.py", 3, "scripts"),
        ("minimodel/a.py", 6, "data_prep"),
        ("minimodel/a.py", 7, "eval"),
        ("minimodel/a.py", 9, "scripts"),
    ]
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "minimodel/a.py:6: minimodel imports data_prep (data_prep.sft)" in out
    assert "scripts    -> data_prep (1), eval (1), minimodel (1)" in out
