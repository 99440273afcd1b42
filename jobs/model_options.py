"""The one check of a model job's solver options, for the CLI, the web form and the JSON API.

``check_model_options(options)`` runs in ``JobService.create_model`` before any job exists, so
every caller gets the same refusals, each naming its field (the service's option names:
``base_lr``, ``batch_size``, ``iter_size``, ``lr_policy``...). Besides values out of range it
refuses schedules that cannot be meant: a rate that is 0 after one iteration (exp with gamma 0,
step with gamma 0), one that grows (poly with a negative power, exp with gamma above 1), steps
placed beyond the end of training (multistep values or a step size above 100 %).
``check_against_dataset`` does the same for what needs the dataset and the derived nets (a
batch larger than the training set is refused) and returns warnings for what may be meant but
is probably not (validation asked of a dataset without validation records): they go into the
job's job.json ("warnings") and its log, and the CLI prints them.
"""
import math

# lr_policy numbers are percentages of the training (DIGITS' form), see jobs.derive.derive_solver.


class ModelOptionError(ValueError):
    """A refused option; ``field`` is the service's option name, ``field_errors`` {field: message}."""

    def __init__(self, message, field):
        ValueError.__init__(self, message)
        self.field = field
        self.field_errors = {field: message}


def _number(options, field, default=None, what="a number"):
    value = options.get(field, default)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ModelOptionError("%s must be %s, got %r" % (field, what, value), field)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ModelOptionError("%s must be %s, got %r" % (field, what, value), field) from None
    if not math.isfinite(number):
        raise ModelOptionError("%s must be a finite number, got %r" % (field, value), field)
    return number


def _whole(options, field, minimum, hint=""):
    number = _number(options, field, what="a whole number")
    if number is None:
        return None
    if number != int(number):
        raise ModelOptionError("%s must be a whole number, got %r" % (field, options[field]), field)
    if number < minimum:
        raise ModelOptionError("%s must be at least %d, got %d%s" % (field, minimum, number, hint), field)
    return int(number)


def check_model_options(options):
    """Raise ModelOptionError for the first option no training can mean; returns None."""
    _whole(options, "epochs", 1)
    lr = _number(options, "base_lr", 0.01)
    if lr is not None and lr <= 0:
        raise ModelOptionError("base_lr must be above 0, got %g (%s)" % (
            lr, "a rate of 0 never changes the weights" if lr == 0 else
            "a negative rate climbs the loss instead of descending it"), "base_lr")
    _whole(options, "batch_size", 1, " (leave it empty to use the network's batch size)")
    _whole(options, "val_batch_size", 1, " (leave it empty to use the network's batch size)")
    _whole(options, "iter_size", 1, " (1 = no accumulation)")
    _whole(options, "crop_size", 1, " (leave it empty for no crop)")
    for field in ("snapshot_interval", "val_interval"):
        value = _number(options, field)
        if value is not None and value < 0:
            raise ModelOptionError("%s must be 0 or more epochs, got %g" % (field, value), field)
    decay = _number(options, "weight_decay")
    if decay is not None and decay < 0:
        raise ModelOptionError("weight_decay must be 0 or more, got %g" % decay, "weight_decay")
    momentum = _number(options, "momentum")
    if momentum is not None and not 0 <= momentum < 1:
        raise ModelOptionError("momentum must be in [0, 1), got %g" % momentum, "momentum")
    _check_policy(dict(options.get("lr_policy") or {"policy": "fixed"}))


def _check_policy(policy):
    name = policy.get("policy", "fixed")
    field = "lr_policy"

    def number(key, default):
        return _number(policy, key, default) if policy.get(key) not in (None, "") else default

    def refuse(message):
        raise ModelOptionError("lr_policy %s: %s" % (name, message), field)

    if name in ("step", "multistep"):
        gamma = number("gamma", 0.1)
        if gamma <= 0:
            refuse("gamma %g makes the rate %s at the first step" % (gamma, "0" if gamma == 0 else "negative"))
    if name in ("step", "sigmoid"):
        size = number("stepsize", 33 if name == "step" else 50)
        if not 0 < size <= 100:
            refuse("step size %g %% of the training %s" % (
                size, "never steps (above 100 %)" if size > 100 else "must be above 0"))
    if name == "multistep":
        raw = str(policy.get("stepvalue", "50,85"))
        try:
            values = [float(v) for v in raw.split(",") if v.strip()]
        except ValueError:
            refuse("step values %r must be numbers (%% of the training), e.g. 50,85" % raw)
        if not values:
            refuse("give at least one step value (%% of the training), e.g. 50,85")
        beyond = [v for v in values if not 0 < v <= 100]
        if beyond:
            refuse("step value %g %% is %s: it would never step" % (
                beyond[0], "beyond the end of training" if beyond[0] > 100 else "not inside the training"))
        if any(b <= a for a, b in zip(values, values[1:])):
            refuse("step values %s must increase" % raw)
    if name == "exp":
        gamma = number("gamma", 0.95)
        if gamma <= 0:
            refuse("gamma %g makes the rate %s after the first iteration" % (
                gamma, "0" if gamma == 0 else "negative"))
        if gamma > 1:
            refuse("gamma %g makes the rate grow %g-fold over the training; use a gamma in (0, 1]" % (gamma, gamma))
    if name == "inv":
        if number("gamma", 0.1) < 0 or number("power", 0.5) < 0:
            refuse("gamma and power must be 0 or more (a negative one makes the rate grow)")
    if name == "poly":
        power = number("power", 3)
        if power < 0:
            refuse("power %g makes the rate grow, without bound at the end of training; use a power above 0"
                   % power)
        if power == 0:
            refuse("power 0 keeps the rate fixed; choose the fixed policy for that")


def check_against_dataset(train_count, val_count, batch_size, val_batch_size, options):
    """Refusals that need the dataset and the derived nets (batch sizes as derived); returns
    the list of warnings."""
    iter_size = int(options.get("iter_size") or 1)
    if batch_size and train_count and batch_size > train_count:
        raise ModelOptionError(
            "batch size %d is larger than the %d training records: every batch would repeat records; "
            "use %d or less" % (batch_size, train_count, train_count), "batch_size")
    if batch_size and train_count and batch_size * iter_size > train_count and iter_size > 1:
        raise ModelOptionError(
            "batch size %d × accumulation %d is larger than the %d training records" % (
                batch_size, iter_size, train_count), "iter_size")
    warnings = []
    val_interval = float(options.get("val_interval", 1) or 0)
    if val_batch_size and not val_count and val_interval > 0:
        warnings.append("the dataset has no validation records: this model is trained without "
                        "validation and cannot be evaluated (build the dataset with a validation "
                        "share, or set the validation interval to 0 to say it is meant)")
    return warnings
