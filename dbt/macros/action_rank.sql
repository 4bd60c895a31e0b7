{#- Order of product actions that share a millisecond: a detail view, then an add, then a purchase. -#}
{% macro action_rank(column) -%}
    case {{ column }} when 'detail' then 1 when 'add' then 2 else 3 end
{%- endmacro %}
