"""A grant that could write where the broker imports Python from is refused at planning.

The broker imports some modules late (a report, a hint): a sandbox able to write a directory on
the broker's ``sys.path`` could leave a module there that then runs as the broker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from privsep.errors import PolicyError
from privsep.plan.importpath import check_grants, protect


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory on a (pretend) sys.path, holding a package, a module and a data directory."""
    (tmp_path / "site" / "pkg").mkdir(parents=True)
    (tmp_path / "site" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "site" / "mod.py").write_text("")
    (tmp_path / "site" / "data").mkdir()
    (tmp_path / "site" / "json").mkdir()  # a stdlib name: an __init__.py here would win
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def _check(site: Path, path: Path, access: tuple[str, ...] = ("read", "write")) -> None:
    check_grants([(str(path), access)], path=[str(site / "site"), "/usr/lib/python3.11"])


@pytest.mark.parametrize("where", ["site", ".", "site/pkg", "site/pkg/sub", "site/json", "site/__pycache__"])
def test_a_write_grant_on_or_over_an_import_directory_or_inside_a_module_is_refused(
    site: Path, where: str
) -> None:
    target = site / where
    target.mkdir(parents=True, exist_ok=True)
    refused = r"(imports Python modules from|could import as a Python module)"
    with pytest.raises(PolicyError, match=refused) as caught:
        _check(site, target)
    assert "grant a directory outside it" in str(caught.value)


@pytest.mark.parametrize("where", ["site/data", "elsewhere"])
def test_a_write_grant_elsewhere_or_of_a_plain_data_directory_is_kept(site: Path, where: str) -> None:
    _check(site, site / where)


def test_read_grants_are_not_concerned(site: Path) -> None:
    _check(site, site / "site", ("read", "list"))


@pytest.mark.parametrize("name", ["zz.pth", "pkg-1.0.dist-info", "old.egg-info"])
def test_what_site_runs_or_reads_in_an_import_directory_is_refused(site: Path, name: str) -> None:
    """A .pth runs at every interpreter start (the forkserver's, with site); a distribution's
    metadata names pytest's plugins."""
    target = site / "site" / name
    target.mkdir()
    with pytest.raises(PolicyError, match="could import as a Python module"):
        _check(site, target)


def test_the_interpreter_and_its_environment_are_refused_whole(site: Path) -> None:
    """The helpers start from sys.executable, and a venv's pyvenv.cfg picks the standard library."""
    assert sys.prefix != sys.base_prefix, "the suite runs from the project's .venv"
    for target in (Path(sys.prefix), Path(sys.prefix) / "bin", Path(sys.executable).parent):
        with pytest.raises(PolicyError, match="holds the Python this process runs"):
            _check(site, target)


def test_protected_directories_are_refused_on_over_and_inside(site: Path) -> None:
    """What the pytest plugin protects: directories imported by path (tests, conftest.py)."""
    tests = site / "elsewhere" / "tests"
    (tests / "sub").mkdir(parents=True)
    _check(site, tests)  # not yet protected
    protect([str(tests)])
    for target in (tests, tests / "sub", site / "elsewhere"):
        with pytest.raises(PolicyError, match="holds the Python this process runs"):
            _check(site, target)
    _check(site, site / "site" / "data")  # the rest is as before


def test_a_grant_over_a_symlink_on_the_way_to_an_import_directory_is_refused(tmp_path: Path) -> None:
    """The 9th audit: ``proj/.venv -> /elsewhere/.venv``; a grant on ``proj`` let the sandbox
    replace the link, and with it what the next helper started from. Named paths count too."""
    real = tmp_path / "elsewhere" / "site"
    real.mkdir(parents=True)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "lib").symlink_to(real.parent)
    with pytest.raises(PolicyError, match="imports Python modules from"):
        check_grants([(str(proj), ("write", "create"))], path=[str(proj / "lib" / "site")])
    check_grants([(str(tmp_path / "other"), ("write",))], path=[str(proj / "lib" / "site")])


def test_privseps_own_package_is_refused_whole_when_it_is_not_on_the_path(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh-eyes audit 12: setuptools' default editable install finds privsep through an import
    hook, so its checkout is on no sys.path entry; a grant of the checkout let the sandbox edit
    ``broker/transparent.py``, which the root broker imported on the first call it served."""
    import privsep
    from privsep.plan import importpath

    monkeypatch.setattr(importpath, "_protected", [])  # not the pytest plugin's rootdir either
    package = Path(privsep.__path__[0])
    for target in (package, package / "broker"):
        with pytest.raises(PolicyError, match="imported a module that is not on sys"):
            _check(site, target)
    with pytest.raises(PolicyError):  # over it (and over this suite's .venv too)
        _check(site, package.parent)


def test_a_module_imported_from_outside_the_path_is_refused(
    tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that imported a package by a path it then took off sys.path (or an import hook's)."""
    hooked = tmp_path / "hooked"
    (hooked / "hookpkg").mkdir(parents=True)
    (hooked / "hookpkg" / "__init__.py").write_text("")
    (hooked / "hookmod.py").write_text("")
    monkeypatch.syspath_prepend(str(hooked))
    for name in ("hookpkg", "hookmod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        __import__(name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(hooked)])
    for target in (hooked, hooked / "hookpkg", hooked / "hookpkg" / "sub", hooked / "hookmod.py"):
        with pytest.raises(PolicyError, match="imported a module that is not on sys"):
            _check(site, target)
    (hooked / "data").mkdir()
    _check(site, hooked / "data")  # beside them: not what was imported


def test_the_bytecode_cache_prefix_is_refused_whole(
    tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit 12: with PYTHONPYCACHEPREFIX granted, the sandbox compiled an unchecked-hash .pyc of
    ``transparent.py`` there, and the root broker ran it."""
    prefix = tmp_path / "pycache"
    (prefix / "work").mkdir(parents=True)
    monkeypatch.setattr(sys, "pycache_prefix", str(prefix))
    for target in (prefix, prefix / "work", tmp_path):
        with pytest.raises(PolicyError, match="PYTHONPYCACHEPREFIX"):
            _check(site, target)


def test_the_loaders_library_path_is_refused_whole(
    tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit 12: a libseccomp.so.2 the sandbox built in a granted LD_LIBRARY_PATH directory was
    loaded into the root broker with pyseccomp, imported to name a denied syscall."""
    libs = tmp_path / "lib"
    libs.mkdir()
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent:{libs}")
    for target in (libs, tmp_path):
        with pytest.raises(PolicyError, match="LD_LIBRARY_PATH"):
            _check(site, target)
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{libs}:")  # an empty entry: the working directory
    monkeypatch.chdir(site / "elsewhere")
    with pytest.raises(PolicyError, match="LD_LIBRARY_PATH"):
        _check(site, site / "elsewhere")


@pytest.mark.parametrize("name", ["_sysconfigdata__x86_64-linux-gnu", "PKG-1.0.DIST-INFO"])
def test_names_that_are_not_identifiers_are_checked_too(site: Path, name: str) -> None:
    """Audit 12: sysconfig imports ``_sysconfigdata__x86_64-linux-gnu`` (not an identifier) while a
    sandbox runs; a package of that name planted in a granted directory on the path ran in the
    broker. importlib.metadata reads distributions' names in any case."""
    target = site / "site" / name
    with pytest.raises(PolicyError, match="could import as a Python module"):
        check_grants([(str(target), ("write",))], path=[str(site / "site"), "/usr/lib/python3.11"])


def test_a_path_is_also_named_by_where_it_is_in_its_filesystem() -> None:
    """The form a bind mount shares with its source (``mount_forms``): the deepest mount point
    holding the path, the later of two on one point, mountinfo's escapes undone."""
    from privsep.plan.importpath import Mount, mount_forms

    # Ids no mount of this machine has: which mount serves these (made-up) paths is not the
    # kernel's to say here, so the deepest mount point is taken, the later of two.
    table: list[Mount] = [
        ("/", "8:1", "/", (), "", 10**9 + 1),
        ("/srv/mirror", "8:1", "/work/project", (), "", 10**9 + 2),  # a bind of /work/project
        ("/tmp", "0:40", "/", (), "", 10**9 + 3),
        ("/tmp", "0:41", "/", (), "", 10**9 + 4),  # mounted over the first
    ]
    assert mount_forms("/work/project/pkg", table) == ["8:1:/work/project/pkg"]
    assert mount_forms("/srv/mirror/pkg", table) == ["8:1:/work/project/pkg"]
    assert mount_forms("/srv/mirror", table) == ["8:1:/work/project"]
    assert mount_forms("/srv/mirrored", table) == ["8:1:/srv/mirrored"]
    assert mount_forms("/tmp/x", table) == ["0:41:/x"]
    assert mount_forms("/tmp", table) == ["0:41:/"]  # the filesystem's root
    assert mount_forms("/x", []) == []


def test_mountinfo_escapes_are_undone_and_nothing_else() -> None:
    """Three octal digits after a backslash are one character; anything else is kept as it is
    (a stray ``\\8`` raised a ValueError out of the importpath reader's copy of this)."""
    from privsep._mountinfo import unescape

    assert unescape("/a\\040b\\011c\\134d\\012") == "/a b\tc\\d\n"
    assert unescape("/plain") == "/plain"
    assert unescape("/a\\089/b\\04/c\\") == "/a\\089/b\\04/c\\"


def test_mountinfo_keeps_every_mount_and_reads_every_overlay_layer() -> None:
    """Audit 15: hidden mounts are kept (which mount serves a path is the kernel's answer, not
    the order's: a bind moved over a later mount is listed first); an overlay's layers are
    unescaped before lowerdir's own escapes are read (a ``\\:`` is written ``\\134:``), and the
    new mount API's ``lowerdir+=``/``datadir+=`` name one layer each."""
    from privsep.plan.importpath import parse_mountinfo

    lines = [
        "20 1 8:1 / / rw - ext4 /dev/sda1 rw",
        "30 20 0:42 / /h/a rw - tmpfs tmpfs rw",
        "31 20 8:1 /srv/h /h rw - ext4 /dev/sda1 rw",  # a bind over /h: /h/a is hidden, and kept
        "40 20 0:50 / /m rw,relatime shared:7 - overlay overlay "
        "rw,lowerdir=/l1:/l\\134:2:/sp\\040ace,upperdir=/u,workdir=/w,uuid=on",
        "41 20 0:51 / /n rw - overlay none "
        "rw,lowerdir+=/a,lowerdir+=/b\\054c,datadir+=/d,upperdir=/u2,workdir=/w2",
        "42 20 0:52 / /r rw - overlay overlay rw,lowerdir=lower,upperdir=up,workdir=wk",
        "garbage",
    ]
    table = parse_mountinfo("\n".join(lines))
    assert [(m[0], m[5]) for m in table] == [
        ("/", 20),
        ("/h/a", 30),
        ("/h", 31),
        ("/m", 40),
        ("/n", 41),
        ("/r", 42),
    ]
    assert table[3][3:5] == (("/l1", "/l:2", "/sp ace", "/u", "/w"), "/u")
    assert table[4][3:5] == (("/a", "/b,c", "/d", "/u2", "/w2"), "/u2")
    assert table[5][3:5] == (("lower", "up", "wk"), "up")


def test_an_overlay_with_a_relative_layer_over_an_import_directory_refuses_write_grants() -> None:
    """Audit 15: a layer named relative to where the overlay was mounted lies nobody knows
    where; with the overlay over an import directory, no write grant can be shown not to reach it."""
    from privsep.plan.importpath import parse_mountinfo, unknown_overlays

    table = parse_mountinfo(
        "42 20 0:52 / /srv/py rw - overlay overlay rw,lowerdir=lower,upperdir=/up,workdir=/wk\n"
        "43 20 0:53 / /srv/other rw - overlay overlay rw,lowerdir=lower,upperdir=/up2,workdir=/wk2"
    )
    assert unknown_overlays(["/srv/py/lib/site-packages"], table) == ["/srv/py"]
    assert unknown_overlays(["/srv"], table) == ["/srv/py", "/srv/other"]
    assert unknown_overlays(["/usr/lib/python3"], table) == []


def test_an_overlay_whose_layer_is_named_through_a_symlink_refuses_write_grants(tmp_path: Path) -> None:
    """Audit 17: a layer named through a release link (``current/up``, ``current`` -> ``v1``),
    then the link switched to ``v2``: the name reaches v2, the layer is still v1's directory,
    and a grant of v1 passed. A layer whose name goes through a symlink is unknown."""
    from privsep.plan.importpath import parse_mountinfo, unknown_overlays

    (tmp_path / "v2" / "up").mkdir(parents=True)
    (tmp_path / "current").symlink_to("v2")
    table = parse_mountinfo(
        f"42 20 0:52 / /srv/py rw - overlay overlay rw,lowerdir=/lo,upperdir={tmp_path}/current/up,"
        f"workdir=/wk\n43 20 0:53 / /srv/ok rw - overlay overlay rw,lowerdir=/lo,upperdir={tmp_path}/v2/up,"
        "workdir=/wk2"
    )
    assert unknown_overlays(["/srv/py/lib"], table) == ["/srv/py"]
    assert unknown_overlays(["/srv/ok/lib"], table) == []


@pytest.mark.parametrize("odd", ["\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u2028"])
def test_a_mount_point_holding_a_control_character_is_read_whole(odd: str) -> None:
    """The kernel escapes only space, tab, newline and backslash in a mount point; a path a
    user may name (a FUSE mount in their home) can hold a carriage return or another control
    character. splitlines() broke the line there and dropped the mount (too few fields on
    either side); the cgroup reader's split() broke fields there and read the wrong path."""
    from privsep import cgroups
    from privsep.plan.importpath import parse_mountinfo

    text = "\n".join(
        [
            "20 1 8:1 / / rw - ext4 /dev/sda1 rw",
            f"50 20 0:60 / /home/eve/x{odd}y\\040z rw,nosuid - fuse.sshfs eve@h:/ rw",
            f"52 20 0:62 / /sys/fs/cgroup/mem{odd}ory rw,nosuid - cgroup cgroup rw,memory",
        ]
    )
    table = parse_mountinfo(text)
    assert [(m[0], m[1]) for m in table] == [
        ("/", "8:1"),
        (f"/home/eve/x{odd}y z", "0:60"),
        (f"/sys/fs/cgroup/mem{odd}ory", "0:62"),
    ]
    (memory,) = cgroups.parse_mountinfo(text)
    assert memory.point == f"/sys/fs/cgroup/mem{odd}ory" and "memory" in memory.options


def test_an_empty_loader_path_is_no_path(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit 14: ``export LD_LIBRARY_PATH=`` (glibc ignores it) refused every grant inside the
    working directory as if it were the loader's."""
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.chdir(site / "elsewhere")
    _check(site, site / "elsewhere" / "build")
