"""Training stages as thin LightningModules (short class names for configs)."""

from geosapiens.stages.adversarial import AdversarialAdaptation
from geosapiens.stages.base import PoseStage
from geosapiens.stages.distill import Distillation
from geosapiens.stages.mean_teacher import MeanTeacherAdaptation
from geosapiens.stages.supervised import SupervisedPose
from geosapiens.stages.tta import TestTimeAdaptation

__all__ = [
    "AdversarialAdaptation",
    "Distillation",
    "MeanTeacherAdaptation",
    "PoseStage",
    "SupervisedPose",
    "TestTimeAdaptation",
]
