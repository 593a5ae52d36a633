// Pins the istio.io/api module whose kubernetes/customresourcedefinitions.gen.yaml (the CRDs
// Istio's charts install) the integration tests load from the module cache. No package is built.
module globaldns.test/tools/istio

go 1.26

require istio.io/api v1.30.8
