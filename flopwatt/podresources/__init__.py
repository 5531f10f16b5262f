"""The kubelet's pod-resources API, vendored: ``v1`` is generated from
``proto/flopwatt/podresources/v1/api.proto``, a wire-compatible subset of upstream's
``k8s.io/kubelet/pkg/apis/podresources/v1/api.proto``. Only ``flopwatt.agent.kubelet`` imports
it."""
