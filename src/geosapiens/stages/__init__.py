"""Every LightningModule: the pose stages, and the tasks that train the pose prior and the small critic.

Short class names for configs (``geosapiens.stages.MeanTeacherAdaptation``)."""

from geosapiens.stages.adversarial import AdversarialAdaptation
from geosapiens.stages.base import PoseStage
from geosapiens.stages.distill import Distillation
from geosapiens.stages.mean_teacher import MeanTeacherAdaptation
from geosapiens.stages.pose_prior import PosePriorTask
from geosapiens.stages.small_critic import SmallCriticTask
from geosapiens.stages.supervised import SupervisedPose
from geosapiens.stages.tta import TestTimeAdaptation

__all__ = [
    "AdversarialAdaptation",
    "Distillation",
    "MeanTeacherAdaptation",
    "PosePriorTask",
    "PoseStage",
    "SmallCriticTask",
    "SupervisedPose",
    "TestTimeAdaptation",
]
