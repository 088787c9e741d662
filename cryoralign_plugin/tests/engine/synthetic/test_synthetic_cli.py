"""engine/synthetic/cli.py: the CTF options of the command line."""
import pytest

from cryoralign_plugin.engine import synthetic as syn


def test_ctf_command_line(tmp_path, capsys):
    syn.main(["--out", str(tmp_path), "--particles", "20", "--box", "32", "--classes", "2", "--seed", "1",
              "--defocus", "1.5", "2.5", "--voltage", "300", "200", "--cs", "2.7", "--pixel-size", "3"])
    truth = syn.read_truth_ctf(str(tmp_path / "truth.star"))
    mean = (truth["defocus_u"] + truth["defocus_v"]) / 2
    assert mean.min() >= 1.5e4 and mean.max() <= 2.5e4 and truth["pixel_size"] == 3.0
    assert set(truth["voltage"]) == {300.0, 200.0} and set(truth["cs"]) == {2.7}
    with pytest.raises(SystemExit):
        syn.main(["--out", str(tmp_path / "bad"), "--ctf", "--voltage", "300", "200", "--optics-groups", "3"])
    capsys.readouterr()
