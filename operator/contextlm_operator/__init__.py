"""The contextlm operator: kopf handlers that reconcile contextlm.io resources.

Layers only look down: `contextlm.api` (models) <- `render` (pure manifest builders)
<- `reconcile` (cluster reads, server-side apply, status) <- `handlers` (kopf
registrations). The runtime package `contextlm` never imports this one.
"""
