"""local_iot"""
