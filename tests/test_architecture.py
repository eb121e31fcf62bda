"""Imports between the packages go one way: minimodel <- data_prep, eval <- scripts."""
import textwrap

from scripts.check_imports import LAYERS, ROOT, circles, find_imports, graph, main, violations


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
    _write(tmp_path, "eval/y.py",
           "from minimodel.io import read_toml\nimport data_prep.shards\nfrom scripts import plan\n")
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


def test_minimodel_layers_import_downwards_only_and_no_module_sits_in_a_circle():
    imports = find_imports(ROOT)
    assert circles(imports, ROOT) == []
    inner = [i for i in imports if i.source == i.target == "minimodel"]
    # the scan sees the layers at work: the lifecycle imports the loop, the loop the network
    assert any(str(i.path) == "minimodel/stages/lifecycle.py" and i.module.startswith("minimodel.train.")
               for i in inner)
    assert len({str(i.path).split("/")[1] for i in inner}) >= len(LAYERS)


def test_an_upward_import_and_a_circle_are_named(tmp_path, capsys):
    _write(tmp_path, "minimodel/__init__.py", "")
    _write(tmp_path, "minimodel/nn/__init__.py", "")
    _write(tmp_path, "minimodel/nn/model.py", "def f():\n    from minimodel.train.loop import run\n")
    _write(tmp_path, "minimodel/train/__init__.py", "")
    _write(tmp_path, "minimodel/train/loop.py", "from minimodel.nn.model import f\n")
    _write(tmp_path, "minimodel/cpt.py", "from minimodel.train.loop import run\n")  # a command: may import all
    _write(tmp_path, "data_prep/a.py", "from data_prep import b\n")
    _write(tmp_path, "data_prep/b.py", "import data_prep.a\n")
    imports = find_imports(tmp_path)
    assert [(str(i.path), i.line) for i in violations(imports)] == [("minimodel/nn/model.py", 2)]
    assert circles(imports, tmp_path) == [["data_prep.a", "data_prep.b"],
                                          ["minimodel.nn.model", "minimodel.train.loop"]]
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "minimodel/nn/model.py:2: minimodel.nn.model imports minimodel.train.loop, a later layer" in out
    assert "circle: data_prep.a -> data_prep.b" in out
