"""The library's `predict` command with a deterministic stand-in network (plumbing.IntensityNet, never a model):
the background process of the widget tests. Everything but the network is the real command: argument parsing,
reading the files, writing labels.nrrd and result.json, the PROGRESS and RESULT lines, the exit status.

    python predict_stand_in.py HOLD_FILE predict --output-dir ... (the arguments the logic gives `predict`)

While HOLD_FILE exists the run waits at its "Postprocessing" report (90 %), so a test can look at (or cancel)
a run in flight.
"""

import sys
import time
from pathlib import Path


def main():
    from BrainTumorFusionLib.app import cli
    from BrainTumorFusionLib.engine.pipeline import Pipeline
    from Testing.plumbing import intensity_model

    hold = Path(sys.argv[1])

    class HeldPipeline(Pipeline):
        def run(self, case, progress=None, should_cancel=None):
            def report(fraction, message):
                progress(fraction, message)
                while message == "Postprocessing" and hold.exists():
                    time.sleep(0.05)
            return super().run(case, report, should_cancel)

    cli.make_pipeline = lambda options, catalogue=None: HeldPipeline(device="cpu", segmenter=intensity_model(),
                                                                     tta=options.tta)
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
