node-b ˜u2€€¨±ãŸçË€¬Çğ7€¨Ö¹ €€€€ :”
kube-systemcoredns-5d78c9869d-abcde
k8s-appkube-dns
pod-template-hash
5d78c9869d €€¨±ãŸçË(€¬Çğ72
corednsÀ·€€€
 € 2
sidecarBkubelet