"""The real Scipion GUI on a virtual X display (Xvfb): project window, both protocols' forms, the
viewer's form and one of its plots open without error, and a screenshot shows them.

Installs nothing: ``make venv`` installs Xvfb (as root, with apt-get) where it is missing; without
it this test is skipped and says so.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from pyworkflow.tests import BaseTest, setupTestProject

from cryoralign_plugin.protocols import CryoralignProtAlign2D, CryoralignProtClassify2D
from cryoralign_plugin.tests.test_protocols import importParticles, slow

SCREEN = "1920x1080x24"
SESSION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gui_session.py")
GUI_TIMEOUT = 180


class VirtualDisplay:
    """An Xvfb server on a display number it picks itself (``-displayfd``), stopped on exit."""

    def __enter__(self):
        read, write = os.pipe()
        self.process = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", SCREEN,
                                         "-nolisten", "tcp"], pass_fds=[write],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(write)
        with os.fdopen(read) as f:
            number = f.readline().strip()
        if not number:
            self.process.kill()
            raise RuntimeError("Xvfb did not start: %s" % self.process.communicate()[1].decode())
        self.display = ":" + number
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=30)


@slow
class TestGui(BaseTest):
    """Opens the GUI on a finished RFA and MRA project, as a user would."""

    @classmethod
    def setUpClass(cls):
        if shutil.which("Xvfb") is None:
            raise __import__("unittest").SkipTest(
                "Xvfb not found: install it (Debian/Ubuntu: apt-get install xvfb; `make venv` does "
                "it when run as root) to test the real GUI")
        setupTestProject(cls)
        rfaImport, _ = importParticles(cls, "rfa")
        mraImport, _ = importParticles(cls, "mra")
        cls.rfa = cls.launchProtocol(cls.newProtocol(
            CryoralignProtAlign2D, inputParticles=rfaImport.outputParticles, useGpu=False,
            numberOfIterations=2))
        cls.mra = cls.launchProtocol(cls.newProtocol(
            CryoralignProtClassify2D, inputParticles=mraImport.outputParticles, useGpu=False,
            numberOfClasses=3, numberOfIterations=2))
        cls.out = os.path.join(cls.proj.getPath(), "gui")
        shutil.rmtree(cls.out, ignore_errors=True)
        os.makedirs(cls.out)

    def test_formsAndViewer(self):
        with VirtualDisplay() as xvfb:
            env = dict(os.environ, DISPLAY=xvfb.display, MPLBACKEND="TkAgg")
            run = subprocess.run([sys.executable, SESSION, self.proj.getPath(),
                                  str(self.rfa.getObjId()), str(self.mra.getObjId()),
                                  "--viewer", str(self.mra.getObjId()), "--out", self.out],
                                 env=env, capture_output=True, text=True, timeout=GUI_TIMEOUT)
        reportFile = os.path.join(self.out, "report.json")
        self.assertTrue(os.path.exists(reportFile), "the GUI session failed:\n%s\n%s"
                        % (run.stdout[-3000:], run.stderr[-3000:]))
        with open(reportFile) as f:
            report = json.load(f)
        self.assertEqual(report["errors"], [])
        titles = " | ".join(report["windows"])
        for expected in ("CryoralignProtAlign2D", "CryoralignProtClassify2D", "CryoralignViewer",
                         self.proj.getShortName()):
            self.assertIn(expected, titles)
        self.assertEqual(report["plots"], ["Class averages - %s" % self.mra.getRunName()])
        self.assertNotIn("Traceback", run.stderr, run.stderr[-3000:])

        screenshot = np.asarray(Image.open(os.path.join(self.out, "screenshot.png")).convert("L"))
        self.assertEqual(screenshot.shape, (1080, 1920))
        self.assertGreater(screenshot.std(), 20)                    # not one flat colour
        self.assertGreater(len(np.unique(screenshot)), 50)         # text, icons, widgets
