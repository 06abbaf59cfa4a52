"""otalign.align"""
