node-a ˜u* 
kubernetes.io/hostnamenode-a2€€¨±ãŸçË€¬Çğ7€¨Ö¹ €€€€ :=
defaultweb-0

appweb €€¨±ãŸçË(€¬Çğ72
webÀ–±€€€ Bkubelet