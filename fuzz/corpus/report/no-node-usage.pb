node-c ˜u: 
nsp €€¨±ãŸçË(€¬Çğ72
cBkubelet