"""Deploy bundles: ``robot-policy export`` writes one (:mod:`robot_policy.runtime.bundle.export`),
:func:`load_bundle` runs one on a backend (:mod:`robot_policy.runtime.bundle.policy`)."""

from robot_policy.runtime.bundle.manifest import BundleError, is_bundle
from robot_policy.runtime.bundle.policy import Bundle, BundlePolicy, load_bundle, open_bundle

__all__ = ["Bundle", "BundleError", "BundlePolicy", "is_bundle", "load_bundle", "open_bundle"]
