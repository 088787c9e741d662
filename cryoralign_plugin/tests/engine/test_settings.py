"""The CLI's defaults are those of :class:`~cryoralign_plugin.engine.settings.Settings`."""
from dataclasses import fields

from cryoralign_plugin.engine import cli
from cryoralign_plugin.engine.geometry import largest_radius
from cryoralign_plugin.engine.downsample import plan
from cryoralign_plugin.engine.settings import SHIFT_RANGE, Settings

REQUIRED = ["--particles", "p.star", "--out", "out"]


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_cli_defaults_are_the_settings_defaults():
    assert cli.settings_from(parse("mra", *REQUIRED, "--classes", "3")) == Settings()
    assert cli.settings_from(parse("rfa", *REQUIRED)) == Settings()


def test_every_setting_has_a_flag():
    given = vars(parse("mra", *REQUIRED, "--classes", "3"))
    assert [f.name for f in fields(Settings) if f.name not in given] == []


def test_flags_set_their_fields():
    args = parse("mra", *REQUIRED, "--classes", "3", "--radius", "20", "--no-mirror", "--exhaustive",
                 "--center", "--gpu", "0, 1", "--threads", "2", "--min-members", "5",
                 "--balanced-iterations", "0", "--seed", "7", "--overcluster", "3", "--overcluster-iterations", "4",
                 "--resplit", "6", "--resplit-iterations", "2")
    expected = Settings(radius=20, mirror=False, exhaustive=True, center=True, gpu=[0, 1], threads=2,
                        min_members=5, balanced_iterations=0, seed=7, overcluster=3, overcluster_iterations=4,
                        resplit=6, resplit_iterations=2)
    assert cli.settings_from(args) == expected
    assert cli.settings_from(parse("rfa", *REQUIRED, "--gpu", "")).gpu is None  # Scipion without GPUs


def test_automatic_values_resolve():
    s = Settings(iterations=9)
    assert (plan(64, None, s).radius, s.resolved_min_members(400, 10), s.resolved_balanced_iterations()) \
        == (largest_radius(64, SHIFT_RANGE), 10, 5)
    # the balanced phase does not depend on the total, so extending a run with --continue keeps it
    assert {Settings(iterations=n).resolved_balanced_iterations() for n in (1, 3, 10, 100)} == {5}
    assert Settings(min_members=1).resolved_min_members(4, 10) == 1
    s = Settings(radius=20, min_members=0, balanced_iterations=0)
    assert (plan(64, None, s).radius, s.resolved_min_members(400, 10), s.resolved_balanced_iterations()) == (20, 0, 0)
