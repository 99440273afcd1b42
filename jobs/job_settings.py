"""What a model job was set up to do, read back from its own files (the model page's Settings).

``training_settings(job_dir, trained_on=None)`` reads the files ``jobs.model_job.write_model_job``
wrote — job.json (the options as given), solver.prototxt (what Caffe runs: solver type, base
LR, policy and its parameters, max_iter, iter_size) and train_val.prototxt (the effective TRAIN
batch: the form's value, else the network's own) — so the page shows the values the training
uses, not the form's blanks. ``trained_on`` is the runner's ``backend_used`` (the backend and
device that ran it). Missing or unreadable files give fewer entries, never an error.
"""
import os

from caffeseg.engine.prototxt import PrototxtError, read_net, read_solver
from caffeseg.jobs import derive
from caffeseg.jobs.paths import read_json

# Which solver.prototxt fields each LR policy uses (Caffe's SGDSolver::GetLearningRate).
POLICY_FIELDS = {"fixed": (), "step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
                 "multistep": ("gamma", "stepvalue"), "poly": ("power",), "sigmoid": ("gamma", "stepsize")}



def _network(facts):
    options = facts.get("options") or {}
    source = facts.get("network_source") or ""
    if options.get("pretrained_network"):
        return "pretrained model %s" % options["pretrained_network"]
    if options.get("standard_network"):
        return "standard network %s" % os.path.basename(options["standard_network"])
    if options.get("previous_job_id") or options.get("previous_job_dir"):
        return "network of model %s" % (options.get("previous_job_id")
                                        or os.path.basename(os.path.dirname(source) or options["previous_job_dir"]))
    return source or None


def _policy(solver):
    policy = solver.lr_policy or "fixed"
    parts = []
    for name in POLICY_FIELDS.get(policy, ()):
        value = getattr(solver, name)
        if name == "stepvalue":
            value = ", ".join(str(v) for v in value) if value else None
        if value not in (None, "", 0) or name == "gamma":
            parts.append("%s %s" % (name, "%g" % value if isinstance(value, float) else value))
    return policy + (" (%s)" % ", ".join(parts) if parts else "")


def _device(options, trained_on):
    if trained_on and trained_on.get("device"):
        return trained_on["device"]
    gpus = options.get("assigned_gpus") or options.get("gpus")
    if gpus:
        return "gpu:" + ",".join(str(g) for g in (gpus if isinstance(gpus, list) else [gpus]))
    if options.get("gpu_count"):
        return "%s GPU(s), not assigned yet" % options["gpu_count"]
    return None


def training_settings(job_dir, trained_on=None):
    """``[(label, value)]`` in display order; values are strings (or numbers) a page shows as is."""
    facts = read_json(os.path.join(job_dir, "job.json"), {})
    options = facts.get("options") or {}
    solver = None
    try:
        solver = read_solver(os.path.join(job_dir, "solver.prototxt"), upgrade=False)
    except (OSError, PrototxtError):
        pass
    batch = None
    try:
        batch = derive.data_batch_size(read_net(os.path.join(job_dir, "train_val.prototxt")), derive.TRAIN_STATE)
    except (OSError, PrototxtError):
        pass
    rows = [("Network", _network(facts))]
    epochs, max_iter = facts.get("epochs"), facts.get("max_iter")
    if epochs:
        per_epoch = max_iter / float(epochs) if max_iter else None
        rows.append(("Epochs", "%s (%s iterations%s)" % (epochs, max_iter, ", %g per epoch" % per_epoch
                                                            if per_epoch else "") if max_iter else epochs))
    if batch:
        accumulate = solver.iter_size if solver is not None and solver.iter_size > 1 else 1
        origin = "from the form" if options.get("batch_size") else "the network's own"
        rows.append(("Batch size", "%d (%s)%s" % (batch, origin, ", accumulated over %d: %d per update"
                                                  % (accumulate, batch * accumulate) if accumulate > 1 else "")))
    if solver is not None:
        rows.append(("Solver", solver.type or "SGD"))
        rows.append(("Base learning rate", "%g" % solver.base_lr))
        rows.append(("Learning rate policy", _policy(solver)))
        if solver.momentum:
            rows.append(("Momentum", "%g" % solver.momentum))
        rows.append(("Weight decay", "%g" % solver.weight_decay))
    weights = options.get("pretrained") or []
    weights = weights if isinstance(weights, list) else [weights]
    rows.append(("Pretrained weights", ", ".join(os.path.basename(w) for w in weights) if weights else "none (from the fillers)"))
    asked = options.get("backend") or "this server's worker"
    used = trained_on.get("name") if trained_on else None
    if used:
        version = trained_on.get("version")
        used = used + (" %s" % version if version else "") + (" (torch %s)" % trained_on["torch"] if trained_on.get("torch") else "")
    rows.append(("Backend", "%s%s" % (asked, "; ran on %s" % used if used else "")))
    device = _device(options, trained_on)
    if device:
        rows.append(("Device", device))
    if options.get("random_seed") not in (None, ""):
        rows.append(("Random seed", options["random_seed"]))
    return [(label, value) for label, value in rows if value not in (None, "")]
