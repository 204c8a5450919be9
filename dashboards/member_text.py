"""The member page's words in Simplified Chinese (the default) and English, and QR codes."""

from __future__ import annotations

from typing import Final

import segno
from markupsafe import Markup

LANGS: Final = ("zh-CN", "en")
TEXT: Final[dict[str, dict[str, str]]] = {
    "title": {"zh-CN": "我的会员", "en": "My membership"},
    "hello": {"zh-CN": "您好，{name}", "en": "Hello, {name}"},
    "tier": {"zh-CN": "会员等级", "en": "Tier"},
    "points": {"zh-CN": "积分", "en": "Points"},
    "not_member": {"zh-CN": "尚未入会", "en": "Not a member yet"},
    "to_next_tier": {"zh-CN": "再得 {points} 积分升级{tier}", "en": "{points} points to {tier}"},
    "top_tier": {"zh-CN": "已是最高等级", "en": "The highest tier"},
    "vehicles": {"zh-CN": "我的车辆", "en": "My vehicles"},
    "no_vehicle": {"zh-CN": "名下暂无车辆", "en": "No vehicle in your name"},
    "owned_since": {"zh-CN": "登记日期", "en": "Yours since"},
    "next_service": {"zh-CN": "预计下次保养", "en": "Next service (predicted)"},
    "by_schedule": {"zh-CN": "按保养周期", "en": "by the schedule"},
    "km_left": {"zh-CN": "约剩 {km} 公里", "en": "about {km} km to go"},
    "unknown": {"zh-CN": "暂无预测", "en": "not predicted yet"},
    "services": {"zh-CN": "保养记录", "en": "Service history"},
    "coupons": {"zh-CN": "我的优惠券", "en": "My coupons"},
    "valid": {"zh-CN": "可使用", "en": "Valid"},
    "used": {"zh-CN": "已使用", "en": "Used"},
    "expired": {"zh-CN": "已过期", "en": "Expired"},
    "shared": {"zh-CN": "已分享给好友", "en": "Shared with friends"},
    "none": {"zh-CN": "暂无", "en": "None"},
    "valid_until": {"zh-CN": "有效期至", "en": "Valid until"},
    "used_on": {"zh-CN": "使用于", "en": "Used on"},
    "code": {"zh-CN": "券码", "en": "Code"},
    "show_counter": {
        "zh-CN": "到店出示二维码或券码",
        "en": "Show the QR code or code at the counter",
    },
    "share": {"zh-CN": "分享给好友", "en": "Share with a friend"},
    "received": {"zh-CN": "好友赠送", "en": "From a friend"},
    "state_shared": {"zh-CN": "好友未使用", "en": "not used yet"},
    "state_redeemed": {"zh-CN": "好友已使用", "en": "used by your friend"},
    "state_expired": {"zh-CN": "已过期", "en": "expired"},
    "state_voided": {"zh-CN": "已作废", "en": "voided"},
    "logout": {"zh-CN": "退出登录", "en": "Sign out"},
    "share_title": {"zh-CN": "分享优惠券", "en": "Share a coupon"},
    "share_help": {
        "zh-CN": "把这个链接发给一位好友（{date} 前有效，只能领取一次）：",
        "en": "Send this link to one friend (good until {date}, one claim):",
    },
    "back": {"zh-CN": "返回会员页", "en": "Back to my page"},
    "claim_title": {"zh-CN": "领取好友分享的优惠券", "en": "Claim a coupon from a friend"},
    "claim_from": {"zh-CN": "{name} 送您一张优惠券", "en": "{name} sends you a coupon"},
    "phone": {"zh-CN": "手机号", "en": "Phone number"},
    "your_name": {"zh-CN": "称呼（可选）", "en": "Your name (optional)"},
    "terms": {
        "zh-CN": "我同意经销商保存我的手机号以便使用此优惠券（必选）",
        "en": "I agree that the dealer keeps my phone number to hold this coupon (required)",
    },
    "marketing": {
        "zh-CN": "我愿意接收经销商的优惠信息（可选）",
        "en": "Send me the dealer's offers (optional)",
    },
    "claim": {"zh-CN": "领取", "en": "Claim"},
    "claimed": {"zh-CN": "领取成功", "en": "Claimed"},
    "claimed_help": {
        "zh-CN": "优惠券已存入您的账户，登录链接已发送到您的手机。",
        "en": "The coupon is yours; a sign-in link was sent to your phone.",
    },
    "claimed_nolink": {
        "zh-CN": "优惠券已存入您的账户，到店报手机号即可使用。",
        "en": "The coupon is yours; give your phone number at the counter.",
    },
    "err_title": {"zh-CN": "无法打开", "en": "Cannot open this"},
    "err_malformed": {
        "zh-CN": "链接不完整，请复制完整链接。",
        "en": "This link is not complete; copy the whole link.",
    },
    "err_tampered": {
        "zh-CN": "链接无效（已被修改）。",
        "en": "This link is not valid (it was changed).",
    },
    "err_expired": {
        "zh-CN": "链接已过期，请重新获取。",
        "en": "This link has expired; ask for a new one.",
    },
    "err_used": {"zh-CN": "此分享链接已被领取。", "en": "This share link was already claimed."},
    "err_signed_out": {
        "zh-CN": "您已用此链接退出登录，请重新获取登录链接。",
        "en": "You signed out with this link; ask for a new sign-in link.",
    },
    "err_login": {
        "zh-CN": "请通过短信或微信消息中的链接登录，或在 /m/login 获取新链接。",
        "en": "Open the link from your text or WeChat message, or get a new one at /m/login.",
    },
    "err_terms": {"zh-CN": "请先同意条款。", "en": "Accept the terms to claim the coupon."},
    "err_phone": {"zh-CN": "请输入正确的手机号。", "en": "Enter a valid phone number."},
    "err_own": {"zh-CN": "不能领取自己分享的优惠券。", "en": "You cannot claim your own coupon."},
    "err_gone": {
        "zh-CN": "优惠券已不可分享或领取。",
        "en": "This coupon can no longer be shared or claimed.",
    },
    "err_csrf": {
        "zh-CN": "页面已过期，请刷新后重试。",
        "en": "The page is stale; reload and try again.",
    },
    "ask_title": {"zh-CN": "获取登录链接", "en": "Get a sign-in link"},
    "ask": {"zh-CN": "发送登录链接", "en": "Send me a link"},
    "asked": {
        "zh-CN": "如果该手机号是会员，登录链接已发送，请查看短信或微信消息。",
        "en": "If this number is a member's, a sign-in link is on its way (text or WeChat).",
    },
    "err_busy": {
        "zh-CN": "请求过于频繁，请一小时后再试。",
        "en": "Too many requests; try again in an hour.",
    },
    "signed_out": {"zh-CN": "已退出登录", "en": "Signed out"},
    "lang_other": {"zh-CN": "English", "en": "中文"},
}


def t(lang: str, key: str, **kw: object) -> str:
    words = TEXT[key].get(lang) or TEXT[key]["zh-CN"]
    return words.format(**kw) if kw else words


def qr_svg(text: str, scale: int = 4) -> Markup:
    """A QR code (never a Micro QR: phone cameras do not read those) as inline SVG."""
    qr = segno.make_qr(text, error="m")
    return Markup(qr.svg_inline(scale=scale, dark="#111", light="#fff", border=2, omitsize=True))
