"""Trust: the PKI, TLS for every port, and who is on the other end (CONTRACT §9).

(API summary below, once the TLS layer lands.)
"""
