"""Form, steps and checks shared by the RFA and MRA protocols.

``CryoralignProtBase`` is a mixin, not a Protocol, so Scipion never lists it as a protocol;
each concrete protocol puts it first in its bases and fills the hooks marked below.
"""
import importlib.util
import os
import shlex
import shutil
from glob import glob

import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pwem.constants import ALIGN_2D
from pyworkflow.protocol.constants import GPU_LIST, USE_GPU

from .. import Plugin
from .. import convert
from ..constants import (CHECKPOINT_GLOB, CTF_AUTO, CTF_CHOICES, CTF_ENGINE_MODES, CTF_FLIP,
                         CTF_NONE, CTF_WIENER, ENGINE_DIR, INPUT_DIR, INPUT_STAR)
from ..engine import outputs, rundir
from ..engine.downsample import checked_plan
from ..engine.errors import InputError
from ..engine.settings import MAX_RESOLUTION, SHIFT_RANGE, SHIFT_STEP, Settings

# Internal box above which the engine gets slow and memory-hungry for no resolution gain in 2D.
LARGE_BOX = 256

# The engine's defaults, which the form's defaults are.  Where the engine's is automatic (None), the
# form uses -1 as Scipion and RELION forms do; _getEngineArgs translates it back.
DEFAULTS = Settings()
AUTOMATIC = -1


def cudaDeviceCount():
    """Number of CUDA devices numba sees (the simulator counts as one); 0 on any failure."""
    try:
        from numba import cuda
        return len(cuda.gpus) if cuda.is_available() else 0
    except Exception:
        return 0


def cudaAvailable():
    """True when numba sees a usable CUDA device (or its simulator); never raises."""
    return cudaDeviceCount() > 0


class CryoralignProtBase:
    """Shared by CryoralignProtAlign2D (RFA) and CryoralignProtClassify2D (MRA)."""
    _engineCommand = None  # 'rfa' or 'mra'
    _averagesName = 'class averages'   # what the engine's averages are, in messages
    _engineFreshFlag = '--overwrite'   # how a new run treats what an earlier execution left

    # --------------------------- DEFINE param functions ----------------------------------------
    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('doContinue', params.BooleanParam, default=False,
                      label='Continue a previous run?',
                      help='Resume a run of this protocol from its last completed iteration '
                           '(e.g. after a crash, a queue time limit, or to run more iterations). '
                           'The input and the search settings are those of the run continued.')
        form.addParam('continueRun', params.PointerParam, pointerClass=self.getClassName(),
                      condition='doContinue', allowsNull=True, label='Run to continue',
                      help='A finished, failed or aborted run of this same protocol.')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      important=True, condition='not doContinue',
                      label=pwutils.Message.LABEL_INPUT_PART,
                      help='Square particle images. Stacks in MRC format are linked, not copied.')
        form.addParam('usePriorAlignment', params.BooleanParam, default=DEFAULTS.use_prior,
                      condition='not doContinue', label='Start from the input alignment?',
                      help='Use the 2D alignment stored in the input particles as the starting '
                           'parameters instead of starting from zero.')
        self._defineInputParams(form)
        self._defineCtfParams(form)

        form.addSection(label='Alignment')
        form.addParam('numberOfIterations', params.IntParam, default=DEFAULTS.iterations,
                      validators=[params.Positive], label='Number of iterations',
                      help='Iterations in total; when continuing, those already done count too.')
        form.addParam('doAutoStop', params.BooleanParam, default=DEFAULTS.auto_stop,
                      label='Stop when converged?',
                      help='Stop before the last iteration once the averages stop improving.')
        form.addParam('maskDiameterA', params.FloatParam, default=AUTOMATIC, condition='not doContinue',
                      label='Particle mask diameter (Å)',
                      help='Diameter of the circular mask, which is also the outer ring of the polar '
                           'grid. -1 (automatic) takes the largest mask for which the rings plus the '
                           'shift search stay inside the box.')
        form.addParam('maxResolution', params.FloatParam, default=AUTOMATIC, condition='not doContinue',
                      label='Maximum resolution (Å)',
                      help='The particles are Fourier-cropped (not interpolated) to the smallest box '
                           'whose Nyquist frequency reaches this resolution and that holds the mask '
                           'and the shift search, and aligned there; the outputs (shifts, class '
                           'averages) stay at the input box and pixel size, the averages computed from '
                           'the original particles. -1 (automatic): %g Å, as cryoSPARC\'s 2D '
                           'classification, or the input\'s Nyquist limit (2 x pixel size) if coarser.'
                           % MAX_RESOLUTION)
        form.addParam('maximumShift', params.FloatParam, default=AUTOMATIC,
                      condition='not doContinue', label='Shift search range (px)',
                      help='Translations from -range to +range (input px) are tried in each '
                           'iteration. -1 (automatic): %g px of the internal box (see Maximum '
                           'resolution), i.e. %g times the downsampling factor in input px.'
                           % (SHIFT_RANGE, SHIFT_RANGE))
        form.addParam('shiftStep', params.FloatParam, default=AUTOMATIC,
                      condition='not doContinue',
                      expertLevel=params.LEVEL_ADVANCED, label='Shift step (px)',
                      help='Spacing of the trial shifts (input px); sub-pixel steps are honoured. '
                           'The cost grows with (2 range / step + 1)^2. -1 (automatic): %g px of '
                           'the internal box.' % SHIFT_STEP)
        form.addParam('firstRing', params.IntParam, default=DEFAULTS.first_ring,
                      condition='not doContinue',
                      validators=[params.Positive], expertLevel=params.LEVEL_ADVANCED,
                      label='First ring (px)', help='Innermost ring of the polar grid.')
        form.addParam('ringStep', params.IntParam, default=DEFAULTS.ring_step,
                      condition='not doContinue',
                      validators=[params.Positive], expertLevel=params.LEVEL_ADVANCED,
                      label='Ring step (px)', help='Spacing of the polar rings.')
        form.addParam('doMirror', params.BooleanParam, default=DEFAULTS.mirror,
                      condition='not doContinue',
                      label='Search mirrors?',
                      help='Also try the mirrored particle; needed unless all views have the '
                           'same handedness on the grid.')
        form.addParam('doCenter', params.BooleanParam, default=DEFAULTS.center,
                      condition='not doContinue',
                      expertLevel=params.LEVEL_ADVANCED, label='Center the averages?',
                      help='Move each average onto its center of mass between iterations, which '
                           'stops the particle shifts from drifting together.')
        self._defineAlignmentParams(form)

        form.addSection(label='Compute')
        form.addHidden(USE_GPU, params.BooleanParam, default=True,
                       label='Use GPU for execution',
                       help='This protocol has both CPU and GPU implementations.')
        form.addHidden(GPU_LIST, params.StringParam, default='0',
                       expertLevel=params.LEVEL_ADVANCED, label='Choose GPU IDs',
                       help='GPU device ids, e.g. "0 1"; MPI rank i uses GPU ids[i % len(ids)].')
        form.addParam('batchSize', params.IntParam, default=DEFAULTS.batch_size,
                      validators=[params.Positive], expertLevel=params.LEVEL_ADVANCED,
                      label='Batch size (particles)',
                      help='Particles read and searched at a time. Lower it if a GPU runs out of '
                           'memory.')
        form.addParam('extraParams', params.StringParam, default='',
                      expertLevel=params.LEVEL_ADVANCED, label='Additional engine arguments',
                      help='Appended to the cryoralign-engine command line as they are.')
        form.addParallelSection(threads=1, mpi=1)

    def _defineInputParams(self, form):
        """Hook: protocol-specific input parameters."""

    def _defineCtfParams(self, form):
        group = form.addGroup('CTF', condition='not doContinue')
        group.addParam('ctfCorrection', params.EnumParam, default=CTF_AUTO, choices=CTF_CHOICES,
                       display=params.EnumParam.DISPLAY_HLIST, label='CTF correction',
                       help='Automatic: Wiener when the input particles have a CTF (e.g. after CTF '
                            'estimation and extraction, or imported from RELION), none otherwise.\n'
                            'Wiener: particles phase-flipped for the alignment (the CTF no longer '
                            'inverts contrast between them) and %s as Wiener-filtered CTF-weighted '
                            'sums: corrected in phase and amplitude, at the input pixel size (as '
                            'RELION, cryoSPARC and ISAC do).\n'
                            'Phase flip only: particles phase-flipped, %s without amplitude '
                            'correction (mid frequencies look washed out).\n'
                            'None: CTF ignored; %s limited to about the first CTF zero (15-25 A).\n'
                            'Particles already phase-flipped (see the input set) are never flipped '
                            'again.' % ((self._averagesName,) * 3))
        group.addParam('ignoreCTFUntilFirstPeak', params.BooleanParam, default=False,
                       condition='ctfCorrection != %d' % CTF_NONE,
                       expertLevel=params.LEVEL_ADVANCED, label='Ignore CTFs until first peak?',
                       help='Leave each CTF at 1 below the frequency of its first peak (as RELION '
                            'does with this option), e.g. for very high defocus or a poor CTF model '
                            'at low resolution. Not generally recommended.')

    def _defineAlignmentParams(self, form):
        """Hook: protocol-specific alignment parameters."""

    # --------------------------- INSERT steps functions ----------------------------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep, self._getInputParticles().getObjId(),
                                 self._ctfMode(), needsGPU=False)
        if self.doContinue:
            self._insertFunctionStep(self.copyContinueStep, self.continueRun.get().getObjId(),
                                     needsGPU=False)
        self._insertFunctionStep(self.runEngineStep, self._getEngineArgs(),
                                 needsGPU=self.usesGpu())
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    # --------------------------- STEPS functions -----------------------------------------------
    def convertInputStep(self, inputId, ctfMode):
        """Write the engine's STAR (stacks linked) and any references; ``inputId`` and ``ctfMode``
        (whether CTF columns are written) make a changed input redo this step when a run is
        resumed."""
        pwutils.makePath(self._getInputPath())
        src = self._getSourceRun()
        mode = ctfMode
        n = convert.writeSetOfParticles(self._getInputParticles(), self._getInputPath(INPUT_STAR),
                                        usePrior=src.usePriorAlignment.get(),
                                        writeCtf=mode != 'none')
        self.info('Wrote %d particles%s to %s' % (n, '' if mode == 'none' else ' with their CTFs',
                                                  self._getInputPath(INPUT_STAR)))
        self.info(self._ctfSentence())
        self._convertReferences(src)

    def _convertReferences(self, src):
        """Hook: write initial references for the engine."""

    def copyContinueStep(self, continueId):
        """Copy (not link: the engine rewrites them) the continued run's manifest, checkpoints and
        history; the engine (--continue) then checks the manifest against this run.  Not copied:
        its particles.star (this run's folder holds a result only once this run has written it) and
        its lock file (a lock belongs to the process holding it)."""
        prevDir = self.continueRun.get()._getExtraPath(ENGINE_DIR)
        if not os.path.isdir(prevDir):
            raise FileNotFoundError('The run to continue has no engine output in %s.' % prevDir)
        holder = rundir.holder(prevDir)
        if holder:
            raise RuntimeError('Run %s is still running (%s): wait for it to finish, or stop it, before '
                               'continuing it.' % (self.continueRun.get().getRunName(), holder))
        shutil.copytree(prevDir, self._getEnginePath(), symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(outputs.PARTICLES_STAR, outputs.LOCK_FILE))

    def runEngineStep(self, args):
        """Run the engine; if it fails, the step fails with the engine's own one-line message."""
        log = self.getStderrLog()
        start = os.path.getsize(log) if os.path.exists(log) else 0
        try:
            self.runJob(Plugin.getProgram(), args, env=Plugin.getEnviron())
        except Exception as exc:
            message = self._engineError(log, start)
            if message is None:
                raise
            raise RuntimeError(message) from exc

    @staticmethod
    def _engineError(log, start):
        """The engine's last ``cryoralign-engine: error...`` line written to ``log`` after ``start``."""
        try:
            with open(log, 'rb') as f:
                f.seek(start)
                lines = f.read().decode(errors='replace').splitlines()
        except OSError:
            return None
        marker = '%s: error' % rundir.PROGRAM
        found = [line[line.index(marker):].strip() for line in lines if marker in line]
        return found[-1] if found else None

    # --------------------------- INFO functions ------------------------------------------------
    def _validate(self):
        if self.doContinue:
            errors = self._validateContinue()
            if errors:
                return errors
        parts = self._getInputParticles()
        if parts is None:
            return ['Choose the input particles.']
        src = self._getSourceRun()
        errors = []
        xdim, ydim = (parts.getDim() or (0, 0, 1))[:2]
        if xdim != ydim:
            errors.append('The particles are %d x %d px: the engine needs square images. Extract '
                          'or resize them to a square box.' % (xdim, ydim))
        try:     # the engine's own checks of the mask, the shifts and the resolution
            self._getScale()
        except InputError as exc:
            errors.append(str(exc))
        shift, step = src.maximumShift.get(), src.shiftStep.get()
        if step != AUTOMATIC and (step <= 0 or (shift > 0 and step > shift)):
            errors.append('The shift step must be > 0 and not larger than the shift range (%g px).'
                          % shift)
        if src.usePriorAlignment and parts.getAlignment() != ALIGN_2D:
            errors.append('The input particles have no 2D alignment (alignment: %s): set "Start '
                          'from the input alignment?" to No, or use 2D-aligned particles.'
                          % parts.getAlignment())
        errors += self._validateCtf(src, parts)
        errors += self._validateInput(src, parts)
        errors += self._validateCompute()
        return errors

    def _validateInput(self, src, parts):
        """Hook: protocol-specific input checks (returns error sentences)."""
        return []

    def _validateCtf(self, src, parts):
        if src.ctfCorrection.get() in (CTF_WIENER, CTF_FLIP) and not parts.hasCTF():
            return ['The input particles have no CTF: choose CTF correction None or Automatic, or '
                    'use particles with CTF (e.g. after CTF estimation).']
        if self._ctfMode() == 'none':
            return []
        acq = parts.getAcquisition()
        missing = [name for name, value in (('voltage', acq.getVoltage()),
                                            ('spherical aberration', acq.getSphericalAberration()),
                                            ('amplitude contrast', acq.getAmplitudeContrast()))
                   if value is None]
        if missing:
            return ['The input particles have a CTF but their acquisition has no %s: set it (e.g. '
                    'when importing them), or choose CTF correction None.' % ', '.join(missing)]
        return []

    def _validateContinue(self):
        prev = self.continueRun.get()
        if prev is None:
            return ['Choose the run to continue.']
        if prev.getObjId() == self.getObjId():
            return ['A run cannot continue itself: copy it into a new run and choose this run '
                    'as the run to continue.']
        if prev.getClassName() != self.getClassName():
            return ['The run to continue is a %s run; only a %s run can be continued here.'
                    % (prev.getClassName(), self.getClassName())]
        if not glob(os.path.join(prev._getExtraPath(ENGINE_DIR), CHECKPOINT_GLOB)):
            return ['Run %s has no completed iteration to continue from: run it anew instead.'
                    % prev.getRunName()]
        holder = rundir.holder(prev._getExtraPath(ENGINE_DIR))
        if holder:
            return ['Run %s is still running (%s): wait for it to finish, or stop it, before '
                    'continuing it.' % (prev.getRunName(), holder)]
        return []

    def _validateCompute(self):
        errors = []
        devices = cudaDeviceCount() if self.usesGpu() and not self.useQueue() else 0
        missing = [g for g in self.getGpuList() if g >= devices] if devices else []
        if missing:
            errors.append('GPU id(s) %s do not exist here: this machine has %d GPU(s), ids 0 to %d.'
                          % (' '.join(map(str, missing)), devices, devices - 1))
        if self.numberOfMpi.get() > 1:
            if importlib.util.find_spec('mpi4py') is None:
                errors.append('MPI needs mpi4py: install it with `pip install mpi4py mpich` in '
                              "Scipion's python, or use 1 MPI process.")
            elif not shutil.which('mpirun', path=Plugin.getEnviron().get('PATH')):
                errors.append('mpirun was not found on the PATH: install an MPI (e.g. `pip install '
                              'mpich`) or use 1 MPI process.')
        return errors

    def _warnings(self):
        parts = self._getInputParticles()
        if parts is None or parts.getDim() is None:
            return []
        warnings = []
        try:
            internal = self._getScale().internal_box
        except InputError:       # _validate reports it
            internal = 0
        if internal > LARGE_BOX:
            warnings.append('The particles are aligned at an internal box of %d px: alignment time grows '
                            'with it and 2D classes rarely need more than ~128 px. Consider a coarser '
                            'Maximum resolution (Å).' % internal)
        if self.usesGpu() and not self.useQueue() and not cudaAvailable():
            warnings.append('No usable CUDA GPU was found here: the run will use the CPU. Set '
                            '"Use GPU" to No to silence this, or check the NVIDIA driver.')
        gpus = self.getGpuList() if self.usesGpu() else []
        if gpus and self.numberOfMpi.get() > len(gpus):
            warnings.append('%d MPI processes share %d GPU(s): process i uses GPU %s[i %% %d].'
                            % (self.numberOfMpi.get(), len(gpus), gpus, len(gpus)))
        return warnings

    def _summary(self):
        history = self._readHistory()
        if not history or not self.hasAttribute(self._mainOutput()):
            return ['Output not ready yet.' + (' %d iteration(s) done.' % len(history)
                                              if history else '')]
        lines = ['Input particles: %s' % self.getObjectTag(self._getInputPointer().get()),
                 'Iterations run: *%d*; mean score in the last one: %.3f.'
                 % (len(history), history[-1].get('mean_score', float('nan')))]
        if self.doContinue:
            lines.append('Continued from run %s.' % self.continueRun.get().getRunName())
        lines.append(self._ctfSentence())
        return lines + self._summaryOutput()

    def _summaryOutput(self):
        """Hook: lines about the outputs."""
        return []

    def _methods(self):
        if not self.hasAttribute(self._mainOutput()):
            return []
        src, scale = self._getSourceRun(), self._getScale()
        at = ('' if not scale.crops else ', at an internal box of %d px (%.3g Å/px, Fourier-cropped from '
              '%d px; averages at the input box)' % (scale.internal_box, scale.internal_pixel_size, scale.box))
        return ['%s with cryoralign [Chung2020], which resamples images to polar coordinates as '
                'SPARX does [Hohn2007] [Tang2007]: rings %d-%d px in steps of %d%s, a shift search of '
                '+-%g px in %g px steps (internal px), %s and %d iterations.'
                % (self._methodsSentence(), src.firstRing.get(), scale.radius, src.ringStep.get(), at,
                   scale.shift_range, scale.shift_step,
                   'with mirrors' if src.doMirror else 'without mirrors',
                   len(self._readHistory()) or self.numberOfIterations.get())
                + self._ctfMethods()]

    def _methodsSentence(self):
        """Hook: the first part of the methods sentence."""
        raise NotImplementedError

    # --------------------------- UTILS functions -----------------------------------------------
    def _mainOutput(self):
        return next(iter(self._possibleOutputs.__members__))

    def _getSourceRun(self):
        """The run whose input and search settings apply (the first of a chain of continues)."""
        run = self
        while run.doContinue and run.continueRun.get() is not None:
            run = run.continueRun.get()
        return run

    def _getInputPointer(self):
        return self._getSourceRun().inputParticles

    def _getInputParticles(self):
        return self._getInputPointer().get()

    def _ctfMode(self):
        """The correction the engine makes: 'wiener', 'flip' or 'none' (Automatic resolved as the
        engine does: Wiener when the input has a CTF)."""
        mode = CTF_ENGINE_MODES[self._getSourceRun().ctfCorrection.get()]
        if mode is None:
            parts = self._getInputParticles()
            mode = 'wiener' if parts is not None and parts.hasCTF() else 'none'
        return mode

    def _ctfSentence(self):
        """What was done about the CTF, for the log and the summary."""
        parts, mode = self._getInputParticles(), self._ctfMode()
        if mode == 'none':
            return 'CTF correction: none (%s).' % ('the input particles have no CTF'
                                                   if not parts.hasCTF() else 'the CTFs were ignored')
        text = {'wiener': 'Wiener-filtered %s of phase-flipped particles' % self._averagesName,
                'flip': 'phase flip only (%s not amplitude-corrected)' % self._averagesName}[mode]
        if parts.isPhaseFlipped():
            text += ', the input being phase-flipped already (not flipped again)'
        if self._getSourceRun().ignoreCTFUntilFirstPeak:
            text += '; CTFs left at 1 until their first peak'
        return 'CTF correction: %s.' % text

    def _ctfMethods(self):
        mode = self._ctfMode()
        if mode == 'none':
            return ''
        flipped = ('The particles had been phase-flipped'
                   if self._getInputParticles().isPhaseFlipped()
                   else 'The particles were phase-flipped with their CTFs')
        if mode == 'flip':
            return ' %s for the alignment, with no amplitude correction of the %s.' % (
                flipped, self._averagesName)
        return (' %s for the alignment, with the %s computed as Wiener-filtered CTF-weighted sums '
                'at the input pixel size.' % (flipped, self._averagesName))

    def _getInputPath(self, *paths):
        return self._getExtraPath(INPUT_DIR, *paths)

    def _getEnginePath(self, *paths):
        return self._getExtraPath(ENGINE_DIR, *paths)

    def _engineSettings(self):
        """The engine's Settings of the form's mask, resolution and shift options (-1: automatic)."""
        src = self._getSourceRun()
        given = lambda value: None if value == AUTOMATIC else value      # others: the engine checks them
        return Settings(mask_diameter=given(src.maskDiameterA.get()), max_resolution=given(src.maxResolution.get()),
                        shift_range=given(src.maximumShift.get()), shift_step=given(src.shiftStep.get()),
                        first_ring=src.firstRing.get(), ring_step=src.ringStep.get())

    def _getScale(self):
        """The engine's internal box and options in its pixels (:func:`engine.downsample.checked_plan`);
        InputError with the engine's message for options that cannot work."""
        parts = self._getInputParticles()
        settings = self._engineSettings()
        settings.check()
        return checked_plan(parts.getXDim(), parts.getSamplingRate(), settings)[0]

    def _getRadius(self):
        """The mask radius in input px."""
        scale = self._getScale()
        return int(scale.radius * scale.factor)

    def _engineValueArgs(self):
        """``--mask-diameter``, ``--max-resolution``, ``--shift-range`` and ``--shift-step`` where given."""
        settings, args = self._engineSettings(), []
        for flag, value in (('--mask-diameter', settings.mask_diameter),
                            ('--max-resolution', settings.max_resolution),
                            ('--shift-range', settings.shift_range), ('--shift-step', settings.shift_step)):
            if value is not None:
                args += [flag, value]
        return args

    def _getEngineArgs(self):
        """The engine command line (a string; %(GPU)s is filled in by Scipion)."""
        src = self._getSourceRun()
        args = [self._engineCommand,
                '--particles', self._getInputPath(INPUT_STAR), '--out', self._getEnginePath(),
                '--first-ring', src.firstRing.get(), '--ring-step', src.ringStep.get()] + \
            self._engineValueArgs() + ['--iterations', self.numberOfIterations.get(),
                '--threads', max(1, self.numberOfThreads.get()),
                '--batch-size', self.batchSize.get()]
        # The engine folder is this run's own: a new run replaces what an earlier execution of this
        # step left there (--overwrite); a continued run resumes the copy of the run it continues.
        flags = [(not src.doMirror, '--no-mirror'), (src.doCenter, '--center'),
                 (self.doAutoStop, '--auto-stop'),
                 (src.usePriorAlignment, '--use-prior'), (self.doContinue, '--continue'),
                 (not self.doContinue, self._engineFreshFlag)]
        args += [flag for on, flag in flags if on]
        args += self._getCtfArgs(src)
        args += self._getMethodArgs(src)
        args = [shlex.quote(str(a)) for a in args]
        if self.extraParams.get():
            args.append(self.extraParams.get().strip())
        if self.usesGpu():
            # runJob %-formats the arguments to fill in %(GPU)s: escape any literal '%'.
            # 'auto' uses the GPUs and falls back to the CPU (and says so) where none is usable.
            return ' '.join(a.replace('%', '%%') for a in args) + ' --backend auto --gpu "%(GPU)s"'
        return ' '.join(args) + ' --backend cpu'

    def _getMethodArgs(self, src):
        """Hook: protocol-specific engine arguments."""
        return []

    def _getCtfArgs(self, src):
        mode = CTF_ENGINE_MODES[src.ctfCorrection.get()]   # None: Automatic, left to the engine
        args = [] if mode is None else ['--ctf', mode]
        if src.ignoreCTFUntilFirstPeak and self._ctfMode() != 'none':
            args.append('--ctf-intact-first-peak')
        return args

    def _readHistory(self):
        try:
            return outputs.read_history(self._getEnginePath())
        except (OSError, ValueError):   # InputError (missing or damaged) is a ValueError
            return []

    def _requireEngineOutputs(self, *names):
        """The paths of engine outputs, or a clear error if the engine did not write them."""
        paths = [self._getEnginePath(n) for n in names]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError('The engine did not write %s: see the engine messages in this '
                                    "run's log." % ', '.join(missing))
        return paths
