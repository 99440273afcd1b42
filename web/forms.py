"""Flask-WTF forms (CSRF-protected) for new datasets and new models.

The dataset form is built per plugin from the plugin's field declarations
(``plugin.base.FormField``, the plugin contract's own) plus the generic fields every dataset has. Every field carries its
help text in ``description``; the templates show it as a tooltip.
"""
from __future__ import annotations

import os
import re

from flask import current_app
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (BooleanField, FloatField, HiddenField, IntegerField, RadioField,
                     SelectField, StringField, TextAreaField)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional, ValidationError

from caffeseg.plugin.base import DataPlugin, FormField

try:  # WTForms >= 3.3 deprecates (value, label) tuples in favour of SelectChoice
    from wtforms.fields.choices import SelectChoice as _SelectChoice
except ImportError:  # older WTForms: tuples are the only form
    _SelectChoice = None


def choice_list(pairs):
    """(value, label) pairs in the form the installed WTForms prefers."""
    pairs = [(str(v), str(l)) for v, l in pairs]
    return [_SelectChoice(v, l) for v, l in pairs] if _SelectChoice else pairs
from caffeseg.web.safety import UnsafePath, within


class ServerPath:
    """The value must name an existing folder/file inside the configured data roots."""

    def __init__(self, must_exist: bool = True, folder: bool | None = None):
        self.must_exist = must_exist
        self.folder = folder

    def __call__(self, form, field):
        if not field.data:
            return
        try:
            path = within(field.data, current_app.config["DATA_ROOTS"])
        except UnsafePath as exc:
            raise ValidationError(str(exc)) from None
        if self.must_exist and not path.exists():
            raise ValidationError(f"{field.data} does not exist")
        if self.folder is True and path.exists() and not path.is_dir():
            raise ValidationError(f"{field.data} is not a folder")
        if self.folder is False and path.exists() and not path.is_file():
            raise ValidationError(f"{field.data} is not a file")
        field.data = str(path)


class PythonLayerPath(ServerPath):
    """A Python layer file: one of the product's own (``python_layers/``, e.g.
    ``digits_python_layers.py``, given by name, as ``python_layers/NAME`` or by its full path)
    is accepted as is; any other file must be inside the data roots (``ServerPath``)."""

    def __init__(self):
        super().__init__(folder=False)

    def __call__(self, form, field):
        from caffeseg.jobs import resources
        value = (field.data or "").strip()
        name = value.replace("\\", "/").rsplit("/", 1)[-1]
        if name.endswith(".py"):
            own = resources.python_layer_file(name[:-len(".py")])
            folder = os.path.basename(resources.python_layers_dir())  # python_layers/, as the user sees it
            if own and value in (name, f"{folder}/{name}", own):
                field.data = own
                return
        super().__call__(form, field)


_NUMBER_LIST_RE = re.compile(r"^\s*[0-9.eE+-]+(\s*,\s*[0-9.eE+-]+)*\s*$")


class NumberList:
    """Comma-separated positive numbers ("multiples allowed" fields: one job per value)."""

    def __init__(self, integer: bool = False):
        self.integer = integer

    def __call__(self, form, field):
        if not field.data or not field.data.strip():
            return
        if not _NUMBER_LIST_RE.match(field.data):
            raise ValidationError("use numbers separated by commas, e.g. 0.01, 0.001")
        for part in field.data.split(","):
            try:
                value = float(part)
            except ValueError:
                raise ValidationError(f"{part.strip()!r} is not a number") from None
            if value <= 0:
                raise ValidationError("every value must be greater than 0")
            if self.integer and value != int(value):
                raise ValidationError(f"{part.strip()} is not a whole number")


def parse_number_list(text: str | None, integer: bool = False) -> list:
    if not text or not text.strip():
        return []
    cast = (lambda s: int(float(s))) if integer else float
    return [cast(p) for p in text.split(",")]


# -- dataset form ------------------------------------------------------------------------

GENERIC_DATASET_FIELDS = ("encoding", "label_encoding", "encoder_threads", "db_backend",
                          "enforce_same_shape", "group_name", "dataset_name")


MAX_JOB_NAME = 100  # a name is shown in tables and titles; a sweep adds " lr=… bs=…" to it


def group_name_field():
    return StringField("Group name", validators=[Optional(), Length(max=64)],
                       description="Jobs with the same group name are listed together on the home page.")


def job_name_field(kind: str):
    return StringField(f"{kind.capitalize()} name", validators=[DataRequired(message=f"give the {kind} a name"),
                                                                Length(max=MAX_JOB_NAME)],
                       description=f"A name to recognise the {kind} by.")


def _wtf_field(spec: FormField):
    validators = [InputRequired(message=f"{spec.label} is required")] if spec.required else [Optional()]
    if spec.kind in ("int", "float") and (spec.min is not None or spec.max is not None):
        validators.append(NumberRange(min=spec.min, max=spec.max))
    kw = dict(label=spec.label, description=spec.help, default=spec.default)
    if spec.kind in ("path", "file"):  # a folder or a file: both only inside the data roots
        validators.append(ServerPath(folder=spec.kind == "path"))
        field = StringField(validators=validators, render_kw={"data-path-complete": "1"}, **kw)
    elif spec.kind == "int":
        field = IntegerField(validators=validators, **kw)
    elif spec.kind == "float":
        field = FloatField(validators=validators, **kw)
    elif spec.kind == "bool":
        field = BooleanField(validators=[Optional()], **kw)
    elif spec.kind == "choice":
        field = SelectField(choices=choice_list(spec.choices), validators=validators,
                            **dict(kw, default=None if spec.default is None else str(spec.default)))
    else:
        field = StringField(validators=validators, **kw)
    return field


class _DatasetBase(FlaskForm):
    encoding = SelectField("Feature encoding", choices=choice_list([("none", "None (exact values)"), ("png", "PNG (lossless)"),
                                                                   ("jpg", "JPEG (lossy, 8-bit images only)")]),
                           default="none",
                           description="How images are stored in the LMDB. 'None' keeps 16-bit values exactly "
                                       "as floats; PNG is lossless and smaller but slower to decode; JPEG is "
                                       "smallest but changes pixel values (8-bit photographs, not 16-bit MRI).")
    label_encoding = SelectField("Label encoding", choices=choice_list([("none", "None (raw class bytes)"),
                                                                         ("png", "PNG (lossless)")]),
                                 default="none",
                                 description="How label images are stored. Labels are class numbers, so only "
                                             "lossless storage is offered.")
    encoder_threads = IntegerField("Encoder threads", default=4,
                                   validators=[InputRequired(), NumberRange(min=1, max=64)],
                                   description="Worker processes that read and encode images in parallel.")
    db_backend = SelectField("DB backend", choices=choice_list([("lmdb", "LMDB")]), default="lmdb",
                             description="Database format of the dataset (Caffe's Data layer reads LMDB).")
    enforce_same_shape = BooleanField("Enforce same shape", default=True,
                                      description="Refuse (and list in the log) images whose size differs from the "
                                                  "first one, instead of failing at training time.")
    group_name = group_name_field()
    dataset_name = job_name_field("dataset")


def dataset_form_class(plugin: DataPlugin) -> type[FlaskForm]:
    """A form class with the plugin's own fields first, then the generic dataset fields."""
    attrs = {}
    fields = plugin.form_fields()
    for spec in fields:
        if spec.name in GENERIC_DATASET_FIELDS or not spec.name.isidentifier():
            continue
        attrs[spec.name] = _wtf_field(spec)
    attrs["plugin_field_names"] = [s.name for s in fields if s.name in attrs]
    return type(f"{plugin.id.capitalize()}DatasetForm", (_DatasetBase,), attrs)


# -- model form --------------------------------------------------------------------------

SOLVER_TYPES = [("SGD", "Stochastic gradient descent (SGD)"), ("Nesterov", "Nesterov's accelerated gradient"),
                ("AdaGrad", "Adaptive gradient (AdaGrad)"), ("RMSProp", "RMSprop"),
                ("AdaDelta", "AdaDelta"), ("Adam", "Adam")]
LR_POLICIES = [("fixed", "Fixed"), ("step", "Step down"), ("multistep", "Step down (arbitrary steps)"),
               ("exp", "Exponential decay"), ("inv", "Inverse decay"), ("poly", "Polynomial decay"),
               ("sigmoid", "Sigmoid decay")]


class ModelForm(FlaskForm):
    dataset = SelectField("Dataset", choices=[], validators=[DataRequired(message="choose a dataset")],
                          invalid_choice_message="this dataset is no longer available (deleted, or its build "
                                                 "failed); choose another",
                          description="The dataset job whose LMDBs feed the Data layers.")
    python_layer_server_file = StringField(
        "Python layer file on the server", validators=[Optional(), PythonLayerPath()],
        render_kw={"data-path-complete": "1", "placeholder": "not needed for the lab's Dice layer"},
        description="Leave empty for the product's own layers: digits_python_layers.py (Dice, DiceLoss, "
                    "SegmentationMetrics) is supplied to every job whose network names it (the lab's step "
                    "\"enter the file path for the custom layer\" needs nothing here; its name is accepted too). "
                    "For your own layers: a .py file inside the data folders; it runs inside the training "
                    "process on this server.")
    python_layer_upload = FileField(
        "…or upload a Python layer file",
        description="Uploaded code runs on this server with the server's permissions.")
    epochs = IntegerField("Training epochs", default=30, validators=[InputRequired(), NumberRange(min=1, max=100000)],
                          description="How many passes over the training set.")
    snapshot_interval = FloatField("Snapshot interval (in epochs)", default=1,
                                   validators=[InputRequired(), NumberRange(min=0)],
                                   description="Save the weights every this many epochs (0 = only at the end).")
    val_interval = FloatField("Validation interval (in epochs)", default=1,
                              validators=[InputRequired(), NumberRange(min=0)],
                              description="Run the validation set every this many epochs (0 = never).")
    random_seed = IntegerField("Random seed", validators=[Optional()],
                               description="Makes weight initialisation and data order reproducible. Empty = random.")
    batch_size = StringField("Batch size", validators=[Optional(), NumberList(integer=True)],
                             description="Images per iteration; empty = the network's value. "
                                         "Several comma-separated values create one job per value.")
    batch_accumulation = IntegerField("Batch accumulation", default=1,
                                      validators=[InputRequired(), NumberRange(min=1, max=1024)],
                                      description="Accumulate gradients over this many batches per update "
                                                  "(Caffe's iter_size).")
    backend = SelectField(
        "Run on", default="",
        choices=choice_list([("", "This server's worker (default)"), ("engine", "PyTorch engine"),
                             ("pycaffe", "Real Caffe (a pycaffe worker)"), ("auto", "Any worker")]),
        description="Which backend trains the model. Real Caffe needs a pycaffe worker "
                    "(docker/compose.yaml); the job waits until one takes it.")
    gpu_count = IntegerField(
        "GPUs (next available)", validators=[Optional(), NumberRange(min=0, max=64)],
        description="Train on this many free GPUs; 0 = the CPU; empty = one GPU where the server has "
                    "GPUs, else the CPU. Several GPUs: one process each, gradients averaged before every "
                    "update (Caffe's multi-GPU rules; an epoch takes N times fewer iterations), PyTorch "
                    "engine only: real Caffe trains a job on one GPU.")
    gpus = StringField("…or these GPUs", validators=[Optional(), Length(max=200)],
                       description="GPU numbers, e.g. 0,1 (instead of a count). Real Caffe: one GPU.")
    share_gpus = BooleanField("May share its GPUs", validators=[Optional()],
                              description="Run on GPUs other jobs use, if they allow sharing too.")

    def validate_gpus(self, field):
        parts = [p.strip() for p in (field.data or "").split(",") if p.strip()]
        if any(not p.isdigit() for p in parts):
            raise ValidationError("GPU numbers separated by commas, e.g. 0,1")
        if parts and self.gpu_count.data not in (None, ""):
            raise ValidationError("give a GPU count or GPU numbers, not both")

    solver_type = SelectField("Solver type", choices=choice_list(SOLVER_TYPES), default="SGD",
                              description="The optimisation algorithm.")
    base_lr = StringField("Base learning rate", default="0.01",
                          validators=[DataRequired(message="give a learning rate"), NumberList()],
                          description="Initial learning rate. Several comma-separated values create one job per value.")
    weight_decay = FloatField("Weight decay", validators=[Optional(), NumberRange(min=0)],
                              description="L2 regularisation. Empty = base_lr / 100, the value DIGITS used silently.")
    rms_decay = FloatField("RMSProp decay", validators=[Optional(), NumberRange(min=0, max=1)],
                           description="RMSProp only: how fast the mean squared gradient forgets (Caffe's "
                                       "rms_decay). Empty = 0.99.")
    lr_policy = SelectField("Policy", choices=choice_list(LR_POLICIES), default="step",
                            description="How the learning rate changes during training.")
    lr_step_size = FloatField("Step size (% of training)", default=33,
                              validators=[Optional(), NumberRange(min=0, max=100)],
                              description="step: the rate drops every this % of training; sigmoid: the midpoint.")
    lr_step_values = StringField("Step values (% of training)", default="50,85",
                                 validators=[Optional(), NumberList()],
                                 description="multistep: the % points where the rate drops.")
    lr_gamma = FloatField("Gamma", default=0.1, validators=[Optional(), NumberRange(min=0)],
                          description="Factor of each drop (step, multistep, exp, inv, sigmoid).")
    lr_power = FloatField("Power", default=0.75, validators=[Optional()],
                          description="Exponent of the inv and poly policies.")
    mean_subtraction = RadioField("Subtract mean", choices=choice_list([("none", "None"), ("image", "Image"), ("pixel", "Pixel")]),
                                  default="image",
                                  description="Image: the dataset's mean image (mean_file). Pixel: one value per "
                                              "channel (mean_value).")
    crop_size = IntegerField("Crop size", validators=[Optional(), NumberRange(min=1)],
                             description="Random crops of this size in training, centre crops in validation.")
    network_source = HiddenField(default="standard")
    standard_network = RadioField("Standard network", choices=[], validators=[Optional()], validate_choice=False)
    previous_network = RadioField("Previous network", choices=[], validators=[Optional()], validate_choice=False)
    previous_snapshot = SelectField(
        "Start from its weights", choices=choice_list([("", "None: the network only")]), validators=[Optional()],
        validate_choice=False,
        description="A snapshot of the chosen previous model whose weights the new model starts from "
                    "(DIGITS' 'Pretrained model' of the Previous Networks tab). None: the layers start "
                    "from their fillers.")
    pretrained_network = RadioField("Pretrained network", choices=[], validators=[Optional()], validate_choice=False)
    custom_network = TextAreaField("Custom network",
                                   description="A train_val prototxt; Data layers are wired to the dataset.")
    pretrained_model = StringField("Pretrained model(s)", validators=[Optional()],
                                   render_kw={"data-path-complete": "1"},
                                   description="One or more .caffemodel files (separate with ':'); "
                                               "layers are matched by name.")
    group_name = group_name_field()
    model_name = job_name_field("model")

    def validate_pretrained_model(self, field):
        for part in [p for p in (field.data or "").split(":") if p.strip()]:
            try:
                path = within(part.strip(), current_app.config["DATA_ROOTS"])
            except UnsafePath as exc:
                raise ValidationError(str(exc)) from None
            if not path.is_file():
                raise ValidationError(f"{part} is not a file")

    def validate_custom_network(self, field):
        if self.network_source.data == "custom" and not (field.data or "").strip():
            raise ValidationError("paste or write a network, or choose another tab")

    def validate_network_source(self, field):
        source = field.data or "standard"
        if source not in ("standard", "previous", "pretrained", "custom"):
            raise ValidationError("unknown network source")
        chosen = {"standard": self.standard_network.data, "previous": self.previous_network.data,
                  "pretrained": self.pretrained_network.data}.get(source)
        if source != "custom" and not chosen:
            raise ValidationError(f"choose a {source} network")
        if source == "pretrained" and chosen not in {getattr(c, "value", None) or c[0] for c in self.pretrained_network.choices or []}:
            raise ValidationError(f"unknown pretrained network {chosen!r}")

    def validate_previous_snapshot(self, field):
        """``JOBID:ITERATION`` of a snapshot of the chosen previous model, or empty."""
        if not field.data or (self.network_source.data or "standard") != "previous":
            return
        job_id, _, iteration = str(field.data).partition(":")
        if job_id != self.previous_network.data or not iteration.isdigit():
            raise ValidationError("choose a snapshot of the chosen previous model (or None)")
        offered = {c.value if hasattr(c, "value") else c[0] for c in self.previous_snapshot.choices or []}
        if field.data not in offered:
            raise ValidationError(f"the chosen model has no snapshot at iteration {iteration}")

    def validate_python_layer_upload(self, field):
        if field.data and getattr(field.data, "filename", ""):
            if not current_app.config.get("ALLOW_PYTHON_LAYER_UPLOAD", True):
                raise ValidationError("Python layer uploads are disabled on this server")
            if not field.data.filename.endswith(".py"):
                raise ValidationError("a Python layer file must end in .py")


class InferenceForm(FlaskForm):
    snapshot = SelectField("Snapshot", choices=[], validate_choice=False,
                           description="Which saved weights to use.")
    record = SelectField("Record from the validation set", choices=[], validate_choice=False,
                         validators=[Optional()],
                         description="A record the model did not train on, named by case and image; its "
                                     "label gives Dice, IoU and the label outline.")
    image = FileField("Image file (PNG, TIFF, DICOM)",
                      description="An image of your own, stored with this model and preprocessed like the "
                                  "training data; without a label there is no Dice.")
    visualize = BooleanField("Show visualizations and statistics",
                             description="Also report every layer's activations and weights (slower).")
    no_resize = BooleanField("Do not resize input image(s)",
                             description="Infer an image of another size as it is (a fully convolutional net "
                                         "takes any size) instead of squashing it to the dataset's size.")
    server_path = StringField("Or an image on the server", validators=[Optional(), Length(max=4096),
                                                                       ServerPath(folder=False)],
                              render_kw={"data-path-complete": "1"},
                              description="A PNG, TIFF or DICOM file inside the server's data folders.")


class PretrainedUploadForm(FlaskForm):
    """DIGITS' "Upload Pretrained Model": a network description and its trained weights."""
    name = StringField("Name", validators=[DataRequired(), Length(max=64)],
                       description="How the model is listed under Pretrained Networks.")
    description = StringField("Description", validators=[Optional(), Length(max=500)],
                              description="Optional: what it was trained on.")
    prototxt = FileField("Network (.prototxt)",
                         description="The train_val or deploy prototxt the weights were trained with; its Data "
                                     "layers are rewired to the chosen dataset.")
    weights = FileField("Weights (.caffemodel)",
                        description="The trained weights; layers are matched to the network by name.")
    # DIGITS' upload fields: kept with the model (its labels, what images it expects)
    labels_file = FileField("Labels file (optional)", description="One class name per line, as DIGITS' labels.txt.")
    image_type = SelectField("Image type", choices=choice_list([("", "(not given)"), ("gray", "Grayscale"),
                                                                ("color", "Color")]), default="",
                             description="The channels the weights were trained on.")
    resize_mode = SelectField("Resize mode", choices=choice_list([("squash", "Squash"), ("crop", "Crop"),
                                                                  ("fill", "Fill"), ("half_crop", "Half crop, half fill")]),
                              default="squash", description="How images of another size were fitted (DIGITS' modes).")
    image_width = IntegerField("Width", validators=[Optional(), NumberRange(min=1, max=65536)],
                               description="The image width the model was trained on (pixels).")
    image_height = IntegerField("Height", validators=[Optional(), NumberRange(min=1, max=65536)],
                                description="The image height the model was trained on (pixels).")

    def validate_prototxt(self, field):
        if not (field.data and getattr(field.data, "filename", "")):
            raise ValidationError("choose the network's .prototxt file")
        if not field.data.filename.lower().endswith((".prototxt", ".txt")):
            raise ValidationError("the network must be a .prototxt (or .txt) file")

    def validate_weights(self, field):
        if not (field.data and getattr(field.data, "filename", "")):
            raise ValidationError("choose the .caffemodel file")
        if not field.data.filename.lower().endswith(".caffemodel"):
            raise ValidationError("the weights must be a .caffemodel file")


class ConfirmForm(FlaskForm):
    """An empty form: only the CSRF token, for the buttons that change state."""


class BulkForm(FlaskForm):
    action = SelectField(choices=choice_list([("delete", "Delete"), ("abort", "Abort"), ("group", "Move to group")]))
    group_name = StringField(validators=[Optional(), Length(max=256)])
