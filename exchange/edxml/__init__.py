"""edXML (QCVN 102:2016) packages: safe parsing, the model, reading and writing."""
