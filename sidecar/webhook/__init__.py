"""`reload-sidecar webhook`: a ValidatingWebhook that refuses a bad ConfigMap before the API server stores it.

The API server POSTs an `admission.k8s.io/v1` AdmissionReview to `/validate`. A ConfigMap annotated
`reload-sidecar/profile: <name>` is run, on CREATE and UPDATE, through that profile's checks: the same
`validate()` the sidecar runs on a new version (parse, schema, the app's own checker on a private staged
copy), on a `Snapshot` built from the ConfigMap's `data` and `binaryData` with the sidecar's own size and
file-count limits. Anything else is let through. An UPDATE that drops or changes the annotation is judged
under the old object's profile too: removing the annotation must not switch the check off.

Modules: `profiles` (the profiles file), `tls` (certificate reloading), `review` (AdmissionReview →
decision, deadlines, the checker queue), `server` (routes, metrics, start and stop).
"""

from .profiles import Profile, load_profiles
from .review import (
    ANNOTATION,
    OUTCOMES,
    BadReview,
    Deadline,
    Decision,
    Review,
    Webhook,
    configmap_files,
    decide,
    parse_go_duration,
    parse_review,
)
from .server import MAX_BODY_BYTES, load_webhook, make_app, run_webhook
from .tls import TlsFiles

__all__ = [
    "ANNOTATION",
    "MAX_BODY_BYTES",
    "OUTCOMES",
    "BadReview",
    "Deadline",
    "Decision",
    "Profile",
    "Review",
    "TlsFiles",
    "Webhook",
    "configmap_files",
    "decide",
    "load_profiles",
    "load_webhook",
    "make_app",
    "parse_go_duration",
    "parse_review",
    "run_webhook",
]
