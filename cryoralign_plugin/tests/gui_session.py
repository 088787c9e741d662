"""Drive Scipion's real Tk GUI on an X display (``test_gui.py`` runs this in a subprocess).

``python gui_session.py PROJECT_PATH PROT_ID [PROT_ID...] --viewer PROT_ID --out DIR`` opens the
project window, then, one Tk callback at a time (each window's ``show`` runs a nested mainloop),
each protocol's form the way a double click does, the viewer the way *Analyze Results* does, one
plot of it, and
finally saves ``DIR/screenshot.png`` and ``DIR/report.json`` (window and plot titles, errors) and exits.
"""
import argparse
import json
import os
import sys
import traceback

STEP_MS = 1500


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("forms", nargs="+", type=int)
    parser.add_argument("--viewer", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from PIL import ImageGrab
    import matplotlib.pyplot as plt
    from pwem import Domain
    from pyworkflow.viewer import DESKTOP_TKINTER
    from pyworkflow.gui.project import ProjectWindow

    window = ProjectWindow(args.project)
    protocols = window.getViewWidget()
    report = {"errors": [], "windows": [], "plots": []}

    def guarded(action):
        def run():
            try:
                action()
            except Exception:
                report["errors"].append(traceback.format_exc())
        return run

    def openForm(protId):
        protocols._editProtocol(window.project.getProtocol(protId))

    def openViewer():
        protocols._analyzeResults(window.project.getProtocol(args.viewer), None)

    def plot():
        """What a click on a plot's eye icon in the viewer form does (a TkAgg window)."""
        viewer = Domain.findViewers(window.project.getProtocol(args.viewer), DESKTOP_TKINTER)[0](
            project=window.project, protocol=window.project.getProtocol(args.viewer), parent=window)
        viewer.setProtocol(viewer.protocol)
        viewer._visualizeParam("displayGallery")
        manager = plt.gcf().canvas.manager
        manager.window.geometry("+0+600")   # below the first form
        report["plots"] = [manager.get_window_title()]

    def tile():
        """Lay the windows out in columns so that the screenshot shows each of them."""
        x = y = width = 0
        for top in toplevels(window.root.master):
            if top is window.root:
                continue
            if y and y + top.winfo_height() > top.winfo_screenheight():
                x, y, width = x + width + 10, 0, 0
            top.geometry("+%d+%d" % (x, y))
            y += top.winfo_height() + 40
            width = max(width, top.winfo_width())

    def finish():
        window.root.update()
        report["windows"] = [top.title() for top in toplevels(window.root.master)
                             if top.winfo_viewable()]
        ImageGrab.grab(xdisplay=os.environ["DISPLAY"]).save(os.path.join(args.out, "screenshot.png"))
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        sys.stdout.flush()
        os._exit(0)   # leave the nested mainloops at once; nothing here needs cleaning up

    steps = [lambda p=p: openForm(p) for p in args.forms] + [openViewer, plot, tile]
    for i, step in enumerate(steps):
        window.root.after(STEP_MS * (i + 1), guarded(step))
    window.root.after(STEP_MS * (len(steps) + 1), finish)
    window.show()


def toplevels(root):
    """Every toplevel window under the Tk root, depth first."""
    import tkinter as tk
    found = []
    for child in root.winfo_children():
        if isinstance(child, tk.Toplevel):
            found.append(child)
        found += toplevels(child)
    return found


if __name__ == "__main__":
    main()
